//! chaos-proxy: a seeded fault-injecting TCP proxy (built under issue 3).
