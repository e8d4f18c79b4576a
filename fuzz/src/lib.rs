//! What the fuzz targets share.

use std::sync::OnceLock;

/// One current-thread runtime for every input of a target (the agent's own kind of runtime).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}
