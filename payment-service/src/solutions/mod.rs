//! The exercise's reference solutions, one per stage of the ladder that
//! `scenarios exercise` plays: solution N passes stages 1 to N and fails
//! stage N + 1 (the mistake that stage exists to catch); solution 5 passes
//! them all. Solution 0 is the starting state of `exercise.rs`, kept here so
//! the tests never depend on what an attendee has typed.

use crate::exercise_kit::Handler;

mod solution_0;
mod solution_1;
mod solution_2;
mod solution_3;
mod solution_4;
mod solution_5;

/// `--exercise-solution N` runs `HANDLERS[N]`.
pub(crate) const HANDLERS: [Handler; 6] = [
    solution_0::handle,
    solution_1::handle,
    solution_2::handle,
    solution_3::handle,
    solution_4::handle,
    solution_5::handle,
];

/// The solutions' source text, for `scenarios exercise --show-solution N`.
pub const SOURCES: [&str; 6] = [
    include_str!("solution_0.rs"),
    include_str!("solution_1.rs"),
    include_str!("solution_2.rs"),
    include_str!("solution_3.rs"),
    include_str!("solution_4.rs"),
    include_str!("solution_5.rs"),
];
