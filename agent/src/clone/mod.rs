//! Making every clone of the build snapshot unique again: the steps of the new-generation routine
//! (`entropy`, `generation`, `secrets`, `identity`, `notify`), what the machine offers for it
//! (`machine`), noticing a restore without a hook (`restore`), and reaching into the app's
//! processes (`inproc`: their OpenSSL and runtime generators, reseeded in place). The routine itself, which runs
//! these steps in order for a hook, is `hooks::routine`.

pub mod entropy;
pub mod generation;
pub mod identity;
pub mod inproc;
pub mod machine;
pub mod notify;
pub mod record;
pub mod restore;
pub mod secrets;
