//! The agent's shared state, and what each hook does: the one place where a hook turns into
//! actions. The HTTP side is in `hooks`; which hook may act in which state is decided by the pure
//! [`Machine`] in `lifecycle`.
//!
//! Acting hooks (`/validate`, `/run`, `/resume`, `/suspend`) run one at a time: the platform may
//! retry a hook while the first attempt is still working, and a `/resume` must not interleave with
//! the `/suspend` before it. `/terminate` never waits for them: stopping must always be possible.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{json, Map, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::clone::generation::Generations;
use crate::clone::lineage::Lineage;
pub use crate::clone::routine::Links;
use crate::config::{Config, Event};
use crate::hooks::lifecycle::{Health, Hook, Machine, State, Verdict};
use crate::sys::state_files::Handle as StateHandle;

mod acting;
mod answer;
pub mod budget;
mod forward;
pub mod lifecycle;
mod per_vm;
mod routine;
mod routine_error;
pub mod run_body;
mod status;
mod stop;
mod warmup;

pub use answer::{Answer, Caller};
use stop::Clocks;
use warmup::Warmup;

/// What `/status` shows for one hook.
#[derive(Clone, Debug, Default)]
struct HookStat {
    /// Calls answered, every outcome counted.
    count: u64,
    /// The last answer's status, outcome and time from headers to answer: what an operator
    /// looks at first when a VM misbehaved.
    last_status: u16,
    last_outcome: &'static str,
    last_elapsed_us: u64,
    /// Answers that were failures reported as 200 (the hook is not in `fail_on`).
    degraded: u64,
    /// The `error` of the last answer that had one, so an operator sees it after the fact.
    last_error: Option<String>,
}

/// The hooks' shared state: one per process, behind an `Arc` that the hook port, the restore
/// watcher and the event loop hold. A few parts, each with one job, each built complete before
/// the agent exists.
pub struct Agent {
    /// Validated once at start, never changed.
    pub config: Config,
    /// The state directory, held by descriptor: every file the app reads is written through it.
    state: StateHandle,
    /// The app and the process launcher.
    links: Links,
    /// Which hook may act now, and what each one did.
    life: Lifecycle,
    /// The build's work: `/validate` and its warm-up.
    build: Build,
    /// This VM's line of generations, and what the routine remembers between runs.
    lineage: Lineage,
    /// What start-up found (for `/status`).
    found: Found,
}

/// Which hook may act now, and what each one did.
struct Lifecycle {
    /// For `/status`'s uptime.
    started: Instant,
    /// The lifecycle state machine: which hook may act now.
    machine: Mutex<Machine>,
    /// Per hook, indexed by `Hook as usize`, for `/status`.
    stats: Mutex<[HookStat; 6]>,
    /// Whether the platform (not a stranger) has asked `/ready`: a build is polling us.
    platform_polled_ready: std::sync::atomic::AtomicBool,
    /// Serialises acting hooks; the guard travels with work that outlives its hook's deadline.
    actions: Arc<tokio::sync::Mutex<()>>,
    /// Tells the main loop to stop the app (and then exit).
    terminate: watch::Sender<bool>,
    /// Signalled when `/ready` has answered 500, which ends a build-time linger.
    failure_reported: tokio::sync::Notify,
    /// How the `/run` that acted failed, if it did: its replays answer the same.
    run_failure: Mutex<Option<(StatusCode, &'static str, Value)>>,
    /// Both clocks at `/suspend`, so that `/resume` can say how long the freeze looked.
    suspended_at: Mutex<Option<Clocks>>,
}

/// The build's work: whether `/validate`'s warm-up requests have run, and the tasks `/run`
/// cancels.
struct Build {
    warmup: Mutex<Warmup>,
    /// A `/validate`'s work and its warm-up while they run: `/run` cancels them.
    validating: Mutex<Option<tokio::task::AbortHandle>>,
    warmup_task: Mutex<Option<tokio::task::AbortHandle>>,
}

/// What start-up found before the agent was built, for `/status`: handed to the constructor, so
/// that nothing is filled in after the agent exists.
#[derive(Default)]
pub struct Found {
    pub restore_sources: Vec<&'static str>,
    pub privileges: Option<crate::sys::caps::Report>,
}

impl Agent {
    /// An agent whose state directory is opened on first use (tests and the fuzz targets).
    pub fn new(config: Config, links: Links) -> Arc<Agent> {
        let state = StateHandle::new(&config.state_dir, None);
        Agent::with_state(config, links, state, Found::default())
    }

    pub fn with_state(
        config: Config,
        links: Links,
        state: StateHandle,
        found: Found,
    ) -> Arc<Agent> {
        Arc::new(Agent {
            config,
            state,
            links,
            life: Lifecycle {
                started: Instant::now(),
                machine: Mutex::default(),
                stats: Mutex::default(),
                platform_polled_ready: Default::default(),
                actions: Arc::default(),
                terminate: watch::channel(false).0,
                failure_reported: tokio::sync::Notify::new(),
                run_failure: Mutex::new(None),
                suspended_at: Mutex::new(None),
            },
            build: Build {
                warmup: Mutex::new(Warmup::NotStarted),
                validating: Mutex::new(None),
                warmup_task: Mutex::new(None),
            },
            lineage: Lineage::default(),
            found,
        })
    }

    /// The published generations and the agent's generator.
    pub fn generations(&self) -> &Generations {
        &self.lineage.generations
    }

    pub fn links(&self) -> &Links {
        &self.links
    }

    pub fn state(&self) -> State {
        crate::sys::lock(&self.life.machine).state()
    }

    /// Whether the platform (a build polling us, not a stranger) has asked `/ready`.
    pub fn ready_polled(&self) -> bool {
        self.life
            .platform_polled_ready
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves once `/ready` has answered 500.
    pub async fn failure_reported(&self) {
        self.life.failure_reported.notified().await
    }

    /// Resolves once `/terminate` has asked the agent to stop its app (and then exit).
    pub async fn terminate_requested(&self) {
        let _ = self.life.terminate.subscribe().wait_for(|t| *t).await;
    }

    fn budget(&self, hook: Hook) -> Duration {
        let h = &self.config.hooks;
        match hook {
            Hook::Ready => h.ready_timeout,
            Hook::Validate => h.validate_timeout,
            Hook::Run => h.run_timeout,
            Hook::Resume => h.resume_timeout,
            Hook::Suspend => h.suspend_timeout,
            Hook::Terminate => h.terminate_timeout,
        }
    }

    fn health(&self) -> Health {
        self.links.app.health()
    }

    /// Answers one hook, always before its deadline.
    pub async fn hook(
        self: &Arc<Self>,
        hook: Hook,
        caller: Caller,
        path: &str,
        body: Bytes,
        arrived: Instant,
    ) -> Answer {
        let deadline = arrived + budget::deadline_after(self.budget(hook));
        let answer = match hook {
            Hook::Ready => self.ready(caller),
            Hook::Terminate => self.terminate(path, deadline).await,
            _ => self.acting(hook, body.clone(), deadline).await,
        };
        // The app's own hook handler, after the agent's work (`/terminate` forwards before the
        // stop begins, inside `terminate`).
        let acted = matches!(answer.outcome, "valid" | "ok" | "resumed" | "suspended");
        let answer = if acted && hook != Hook::Terminate {
            self.pass_through(hook, path, body, deadline, answer).await
        } else {
            answer
        };
        let answer = self.fail_policy(hook, answer);
        let mut stats = crate::sys::lock(&self.life.stats);
        let s = &mut stats[hook as usize];
        s.count += 1;
        s.last_status = answer.status.as_u16();
        s.last_outcome = answer.outcome;
        s.last_elapsed_us = arrived.elapsed().as_micros() as u64;
        if answer.outcome == "degraded" {
            s.degraded += 1;
        }
        if let Some(e) = answer.extra.get("error").and_then(Value::as_str) {
            s.last_error = Some(e.to_string());
        }
        answer
    }

    /// Only a failure before any traffic is worth a dead VM: a non-200 from `/suspend` makes the
    /// platform terminate the VM within seconds (measured), a non-200 `/run` ends it before any
    /// traffic. So a failure (5xx) of a hook that is not in `[hooks] fail_on` answers 200 with
    /// `"outcome":"degraded"`, the failure and its `error`, logged at ERROR and kept in
    /// `/status`. A build hook's 503 is not a failure (it means "ask again"), and 4xx refusals
    /// (409) are answers, not failures.
    fn fail_policy(&self, hook: Hook, answer: Answer) -> Answer {
        let status = answer.status.as_u16();
        let poll = hook.is_build_time() && answer.status == StatusCode::SERVICE_UNAVAILABLE;
        let may_fail = match hook {
            Hook::Ready => true,
            Hook::Terminate => false,
            Hook::Validate => self.config.hooks.fails_on(Event::Validate),
            Hook::Run => self.config.hooks.fails_on(Event::Run),
            Hook::Resume => self.config.hooks.fails_on(Event::Resume),
            Hook::Suspend => self.config.hooks.fails_on(Event::Suspend),
        };
        if status < 500 || poll || may_fail {
            return answer;
        }
        let mut extra = match answer.extra {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let error = extra
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("the hook's work failed")
            .to_string();
        tracing::error!(
            hook = hook.name(),
            failure = answer.outcome,
            error = %error,
            "the hook's work failed; answering 200 (a non-200 would end the VM; see [hooks] fail_on)"
        );
        extra.insert("failure".into(), json!(answer.outcome));
        extra.insert("error".into(), json!(error));
        Answer::with(StatusCode::OK, "degraded", Value::Object(extra))
    }

    fn ready(&self, caller: Caller) -> Answer {
        if caller != Caller::Public {
            self.life
                .platform_polled_ready
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let verdict = crate::sys::lock(&self.life.machine).ready(self.health());
        match verdict {
            Verdict::Act => Answer::ok("ready"),
            Verdict::Failed => {
                // Ends a build-time linger once the platform has been told. A stranger's call
                // through the public endpoint gets the same answer but must not end the linger:
                // the platform's own next poll would then find nothing listening.
                if caller != Caller::Public {
                    self.life.failure_reported.notify_one();
                }
                let app = self.links.app.view();
                Answer::with(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "failed",
                    json!({ "error": "the app has exited for good", "last_exit": app.last_exit, "restarts": app.restarts }),
                )
            }
            Verdict::NotYet(why) => {
                let probe = self.links.app.last_probe();
                Answer::with(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not-ready",
                    json!({ "error": why, "last_probe": probe }),
                )
            }
            other => unreachable!("ready verdict {other:?}"),
        }
    }

    /// Files only the app may read belong to the app's user.
    fn app_owner(&self) -> Option<(u32, u32)> {
        self.links.launcher.owner()
    }
}
