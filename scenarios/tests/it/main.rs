//! Scenario tests: every catalog lesson, small and seeded, must give its
//! expected verdict; a lost acknowledgement is reproduced step by step; bad
//! catalog files get errors that name the file, the field and the fix.

mod catalog_errors;
mod exercise;
mod judge;
mod lessons;
mod live_page;
mod lost_ack;
mod output;
mod outside;
mod second_hop;
