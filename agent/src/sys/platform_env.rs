//! Where the agent runs: Lambda MicroVMs inject `AWS_LAMBDA_MICROVM_IMAGE_ARN`, `_NAME`,
//! `_VERSION` and `AWS_REGION` into the container's environment (measured; docs/platform.md). The
//! image ARN tells "on the platform" apart from a local run. Read once: the environment is fixed
//! at build time and frozen into the snapshot, so it says which image, never which VM.

use std::sync::OnceLock;

use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
pub struct PlatformEnv {
    pub image_arn: String,
    pub image_name: Option<String>,
    pub image_version: Option<String>,
    pub region: Option<String>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The platform's image, or `None` when the agent does not run on Lambda MicroVMs.
pub fn get() -> Option<&'static PlatformEnv> {
    static ENV: OnceLock<Option<PlatformEnv>> = OnceLock::new();
    ENV.get_or_init(|| {
        Some(PlatformEnv {
            image_arn: var("AWS_LAMBDA_MICROVM_IMAGE_ARN")?,
            image_name: var("AWS_LAMBDA_MICROVM_IMAGE_NAME"),
            image_version: var("AWS_LAMBDA_MICROVM_IMAGE_VERSION"),
            region: var("AWS_REGION"),
        })
    })
    .as_ref()
}
