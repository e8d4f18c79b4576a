//! The hook port: the accept loop and its connections (`accept`: socket options, the header
//! deadline; `slots`: the connection table, capped below the descriptor limit), the axum router (`routes`: paths, methods, JSON answers) and
//! its route layers (`layers`: the origin check, the body limit and deadline), and what they share
//! (`request`: the request extensions and the JSON answers). What a hook
//! *does* is in `hooks`.

pub mod accept;
pub mod layers;
pub mod request;
pub mod routes;
pub mod slots;
