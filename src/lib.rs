pub mod cache;
pub mod clock;
pub mod seal;
pub mod session;
pub mod store;
pub mod tickets;
