//! Making every clone of the build snapshot unique again: the steps of the new-generation routine
//! (`entropy`, `generation`, `secrets`, `identity`, `notify`), what the machine offers for it
//! (`machine`), noticing a restore without a hook (`restore`), and reaching into the app's
//! processes (`inproc`: their OpenSSL and runtime generators, reseeded in place). The routine itself runs these
//! steps in order (`routine`, its typed `record`, this VM's `lineage`, the `per_vm` repairs);
//! when it runs and what that means for a hook is the hooks' (`hooks::routine`).

pub mod entropy;
pub mod generation;
pub mod identity;
pub mod inproc;
pub mod lineage;
pub mod machine;
pub mod notify;
pub mod per_vm;
pub mod record;
pub mod restore;
pub mod routine;
pub mod routine_error;
pub mod secrets;
