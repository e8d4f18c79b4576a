//! The hook port: the accept loop and its connections (`accept`: socket options, header and body
//! deadlines, the connection table), and the HTTP surface (`routes`: paths, methods, the origin
//! check, the body limit, JSON answers). What a hook *does* is in `hooks`.

pub mod accept;
pub mod routes;
