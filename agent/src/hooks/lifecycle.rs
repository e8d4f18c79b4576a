//! The lifecycle state machine: which hook may act in which state. Pure and synchronous, so that
//! every rule is a unit test; `hooks` asks it for a [`Verdict`] and carries out the work.
//!
//! ```text
//! Booting --app ready--> Ready --/run--> Running <--/suspend, /resume--> Suspended
//!                          |                 \                              /
//!                      /validate              `------> Terminating <-------'
//! ```
//! - `/run` acts once. A byte-identical replay answers 200 without acting; a different body 409.
//! - Repeated `/suspend`, `/resume`, `/terminate` are idempotent: 200 without acting again.
//! - Runtime hooks that make no sense in the current state (a `/suspend` before `/run`) answer 200
//!   and do nothing: a non-200 from a runtime hook makes the platform kill the VM, which is worse.
//! - After `/terminate`, `/ready` and `/validate` answer 503.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The app is not ready yet (or never was): `/ready` answers 503.
    Booting,
    /// The app is ready; the platform may snapshot us. `/validate` runs here, on a clone.
    Ready,
    Running,
    Suspended,
    Terminating,
}

/// The app's health comes from the supervisor; the state machine only reads it.
pub use crate::supervise::Health;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Ready,
    Validate,
    Run,
    Resume,
    Suspend,
    Terminate,
}

impl Hook {
    pub const ALL: [Hook; 6] = [
        Hook::Ready,
        Hook::Validate,
        Hook::Run,
        Hook::Resume,
        Hook::Suspend,
        Hook::Terminate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Hook::Ready => "ready",
            Hook::Validate => "validate",
            Hook::Run => "run",
            Hook::Resume => "resume",
            Hook::Suspend => "suspend",
            Hook::Terminate => "terminate",
        }
    }

    pub fn from_name(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.name() == name)
    }

    /// Build-time hooks are polled (503 = ask again) and also answer GET.
    pub fn is_build_time(self) -> bool {
        matches!(self, Hook::Ready | Hook::Validate)
    }
}

/// What a hook should do, given the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Do the hook's work; the state has already moved on.
    Act,
    /// The same `/run` again: answer 200, do nothing.
    Replay,
    /// A repeat of a hook that already acted: answer 200, do nothing.
    Already,
    /// Nothing to do in this state; answer 200 with this reason.
    Ignored(&'static str),
    /// Ask again later: 503.
    NotYet(&'static str),
    /// The app has failed for good: 500.
    Failed,
    /// 409 with this reason.
    Conflict(&'static str),
}

#[derive(Debug)]
pub struct Machine {
    state: State,
    /// The body of the `/run` that acted, to tell a replay from a second, different run.
    run_body: Option<Vec<u8>>,
}

impl Default for Machine {
    fn default() -> Self {
        Machine {
            state: State::Booting,
            run_body: None,
        }
    }
}

impl Machine {
    pub fn state(&self) -> State {
        self.state
    }

    /// Feeds the app's health in; the first `Up` moves Booting to Ready.
    pub fn observe(&mut self, health: Health) {
        if self.state == State::Booting && health == Health::Up {
            self.state = State::Ready;
        }
    }

    pub fn ready(&mut self, health: Health) -> Verdict {
        self.observe(health);
        match (self.state, health) {
            (State::Terminating, _) => Verdict::NotYet("terminating"),
            (_, Health::Failed) => Verdict::Failed,
            (_, Health::Starting) => Verdict::NotYet("the app is not ready yet"),
            (_, Health::Up) => Verdict::Act,
        }
    }

    pub fn validate(&mut self, health: Health) -> Verdict {
        self.observe(health);
        match (self.state, health) {
            (State::Terminating, _) => Verdict::NotYet("terminating"),
            (_, Health::Failed) => Verdict::Failed,
            (State::Booting, _) | (_, Health::Starting) => {
                Verdict::NotYet("the app is not ready yet")
            }
            (State::Ready, Health::Up) => Verdict::Act,
            (State::Running | State::Suspended, _) => Verdict::Conflict(
                "/validate is a build-time hook; this VM has already received /run",
            ),
        }
    }

    pub fn run(&mut self, body: &[u8]) -> Verdict {
        if let Some(first) = &self.run_body {
            return if first == body {
                Verdict::Replay
            } else {
                Verdict::Conflict("/run already acted with a different body")
            };
        }
        match self.state {
            State::Terminating => Verdict::Ignored("terminating"),
            // Booting is accepted: the platform only runs clones of a ready snapshot, and a
            // local caller that runs early is better served than refused (a non-200 kills the VM).
            State::Booting | State::Ready | State::Running | State::Suspended => {
                self.run_body = Some(body.to_vec());
                self.state = State::Running;
                Verdict::Act
            }
        }
    }

    pub fn suspend(&mut self) -> Verdict {
        match self.state {
            State::Running => {
                self.state = State::Suspended;
                Verdict::Act
            }
            State::Suspended => Verdict::Already,
            State::Terminating => Verdict::Ignored("terminating"),
            State::Booting | State::Ready => Verdict::Ignored("not running (no /run yet)"),
        }
    }

    /// A `/resume` while Running is a retry of the last one (the platform retries hooks), not a
    /// new restore: it answers 200 without a new generation. A restore that came without its
    /// `/suspend` is caught by restore detection instead.
    pub fn resume(&mut self) -> Verdict {
        match self.state {
            State::Suspended => {
                self.state = State::Running;
                Verdict::Act
            }
            State::Running => Verdict::Already,
            State::Terminating => Verdict::Ignored("terminating"),
            State::Booting | State::Ready => Verdict::Ignored("not running (no /run yet)"),
        }
    }

    /// A restore noticed without its `/resume`: a suspended VM is running again.
    pub fn restored(&mut self) {
        if self.state == State::Suspended {
            self.state = State::Running;
        }
    }

    pub fn terminate(&mut self) -> Verdict {
        if self.state == State::Terminating {
            return Verdict::Already;
        }
        self.state = State::Terminating;
        Verdict::Act
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::*;

    #[test]
    fn ready_follows_health_and_terminate() {
        let mut m = Machine::default();
        assert_eq!(
            m.ready(Starting),
            Verdict::NotYet("the app is not ready yet")
        );
        assert_eq!(m.state(), State::Booting);
        assert_eq!(m.ready(Up), Verdict::Act);
        assert_eq!(m.state(), State::Ready);
        assert_eq!(
            m.ready(Starting),
            Verdict::NotYet("the app is not ready yet"),
            "a restarting app is not ready"
        );
        assert_eq!(m.ready(Failed), Verdict::Failed);
        assert_eq!(m.terminate(), Verdict::Act);
        assert!(matches!(m.ready(Up), Verdict::NotYet(_)));
        assert!(matches!(m.validate(Up), Verdict::NotYet(_)));
    }

    #[test]
    fn validate_only_from_ready() {
        let mut m = Machine::default();
        assert!(matches!(m.validate(Starting), Verdict::NotYet(_)));
        assert_eq!(m.validate(Up), Verdict::Act);
        assert_eq!(
            m.validate(Up),
            Verdict::Act,
            "validate is polled; the hook tracks its own progress"
        );
        assert_eq!(m.run(b"x"), Verdict::Act);
        assert!(matches!(m.validate(Up), Verdict::Conflict(_)));
    }

    #[test]
    fn run_acts_once_replay_is_200_different_is_409() {
        let mut m = Machine::default();
        m.observe(Up);
        assert_eq!(m.run(b"body"), Verdict::Act);
        assert_eq!(m.state(), State::Running);
        assert_eq!(m.run(b"body"), Verdict::Replay);
        assert!(matches!(m.run(b"other"), Verdict::Conflict(_)));
        assert!(matches!(m.run(b""), Verdict::Conflict(_)));
        assert_eq!(m.suspend(), Verdict::Act);
        assert_eq!(
            m.run(b"body"),
            Verdict::Replay,
            "replay is recognised in any later state"
        );
    }

    #[test]
    fn empty_run_is_a_run_and_its_replay_is_recognised() {
        let mut m = Machine::default();
        assert_eq!(m.run(b""), Verdict::Act, "run before ready is accepted");
        assert_eq!(m.run(b""), Verdict::Replay);
    }

    #[test]
    fn suspend_resume_terminate_are_idempotent() {
        let mut m = Machine::default();
        m.observe(Up);
        assert!(
            matches!(m.suspend(), Verdict::Ignored(_)),
            "suspend before run does nothing"
        );
        assert!(matches!(m.resume(), Verdict::Ignored(_)));
        m.run(b"");
        assert_eq!(
            m.resume(),
            Verdict::Already,
            "resume while running is a retry"
        );
        assert_eq!(m.suspend(), Verdict::Act);
        assert_eq!(m.suspend(), Verdict::Already);
        assert_eq!(m.state(), State::Suspended);
        assert_eq!(m.resume(), Verdict::Act);
        assert_eq!(m.resume(), Verdict::Already);
        assert_eq!(m.suspend(), Verdict::Act);
        assert_eq!(m.terminate(), Verdict::Act);
        assert_eq!(m.terminate(), Verdict::Already);
        assert!(matches!(m.resume(), Verdict::Ignored(_)));
        assert!(matches!(m.suspend(), Verdict::Ignored(_)));
        assert_eq!(m.state(), State::Terminating);
    }
}
