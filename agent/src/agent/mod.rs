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
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::budget::{self, Missed};
use crate::config::{Config, Event};
use crate::generation::Generations;
use crate::lifecycle::{Health, Hook, Machine, State, Verdict};
use crate::reaper::Reaper;
use crate::spawn::RunAs;
use crate::supervisor::AppView;
use crate::supervisor::Command;
use crate::{probe, run_body, state_files};

mod forward;
mod routine;

/// The monotonic and the wall clock, read together at `/suspend`, so that `/resume` can report how
/// long the freeze looked on each.
///
/// On Lambda MicroVMs **both** clocks advance across a suspend, by the whole suspended time
/// (measured: 313 s suspended, wall +313.15 s, monotonic +313.14 s; CONTRACT.md). So every
/// deadline armed before a freeze is due at once after it: `sys::clock` is how the agent's own
/// timers tell a freeze from elapsed work (a timer that fires late re-arms instead of acting).
#[derive(Clone, Copy, Debug)]
struct Clocks {
    mono: Instant,
    wall: std::time::SystemTime,
}

impl Clocks {
    fn now() -> Self {
        Clocks {
            mono: Instant::now(),
            wall: std::time::SystemTime::now(),
        }
    }

    fn since(then: Clocks) -> Value {
        let wall = std::time::SystemTime::now()
            .duration_since(then.wall)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(-1);
        json!({ "monotonic_ms": then.mono.elapsed().as_millis() as u64, "wall_ms": wall })
    }
}

/// The longest a `GET /generation?after=N` waits.
const LONG_POLL: Duration = Duration::from_secs(60);

/// The least time one warm-up request may take (the hook's own budget if longer).
const WARMUP_REQUEST_LIMIT: Duration = Duration::from_secs(30);

/// A hook's answer before it becomes HTTP: status, a one-word outcome for logs and `/status`,
/// and extra JSON fields.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub outcome: &'static str,
    pub extra: Value,
}

impl Answer {
    pub fn ok(outcome: &'static str) -> Self {
        Answer {
            status: StatusCode::OK,
            outcome,
            extra: json!({}),
        }
    }

    pub fn with(status: StatusCode, outcome: &'static str, extra: Value) -> Self {
        Answer {
            status,
            outcome,
            extra,
        }
    }

    pub fn error(status: StatusCode, outcome: &'static str, error: impl Into<String>) -> Self {
        Answer {
            status,
            outcome,
            extra: json!({ "error": error.into() }),
        }
    }
}

/// What `/status` shows for one hook.
#[derive(Clone, Debug, Default)]
struct HookStat {
    count: u64,
    last_status: u16,
    last_outcome: &'static str,
    last_elapsed_us: u64,
    /// Answers that were failures reported as 200 (the hook is not in `fail_on`).
    degraded: u64,
    /// The `error` of the last answer that had one, so an operator sees it after the fact.
    last_error: Option<String>,
}

/// Who called a hook, as far as the request tells (CONTRACT.md, "Measured on the live service").
/// It can only ever be a heuristic: every header can be forged by whoever holds a token for the
/// hook port, so no hook may do harm when a stranger calls it, whatever this says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A loopback `Host` and no `x-amzn-requestid`: the platform's runtime calls (and local use).
    Platform,
    /// The image builder: the build-time `/ready` and `/validate` come with the build VM's
    /// endpoint as `Host`, an `x-amzn-requestid` and `user-agent: smithy-*` (measured).
    Builder,
    /// Anything else that looks forwarded from the public endpoint.
    Public,
}

/// What connects the agent to the rest of the process (built in `lib::run`).
pub struct Links {
    /// The app's health, published by the supervisor (always `Up` in sidecar mode).
    pub health: watch::Receiver<Health>,
    /// The app as the supervisor last published it (default in sidecar mode).
    pub app: watch::Receiver<AppView>,
    pub reaper: Arc<Reaper>,
    /// The readiness probe's last failed attempt, written by the probe task.
    pub last_probe: Arc<Mutex<Option<String>>>,
    /// Requests to the event loop (restart the app for `restart_on`, re-arm after a resume).
    pub commands: mpsc::UnboundedSender<Command>,
    pub run_as: Option<RunAs>,
}

pub struct Agent {
    pub config: Config,
    links: Links,
    started: Instant,
    machine: Mutex<Machine>,
    stats: Mutex<[HookStat; 6]>,
    /// Whether the platform (not a stranger) has asked `/ready`: a build is polling us.
    platform_polled_ready: std::sync::atomic::AtomicBool,
    /// Serialises acting hooks; the guard travels with work that outlives its hook's deadline.
    actions: Arc<tokio::sync::Mutex<()>>,
    /// Tells the main loop to stop the app (and then exit).
    terminate: watch::Sender<bool>,
    microvm_id: Mutex<Option<String>>,
    /// Signalled when `/ready` has answered 500, which ends a build-time linger.
    failure_reported: tokio::sync::Notify,
    warmup: Mutex<Warmup>,
    pub generations: Generations,
    /// The last new-generation routine, for `/status`.
    last_routine: Mutex<Value>,
    /// When the last routine ran for a hook, so a restore detected right after is not redone.
    last_hook_routine: Mutex<Option<Instant>>,
    /// How the `/run` that acted failed, if it did: its replays answer the same.
    run_failure: Mutex<Option<(StatusCode, &'static str, Value)>>,
    /// Both clocks at `/suspend`, so that `/resume` can say how long the freeze looked.
    suspended_at: Mutex<Option<Clocks>>,
    /// Which restore-detection sources this VM offers, for `/status`.
    pub restore_sources: std::sync::OnceLock<Vec<&'static str>>,
}

/// The `/validate` warm-up, which outlives the polls that watch it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Warmup {
    NotStarted,
    Running,
    Passed(usize),
    Failed(String),
}

impl Agent {
    pub fn new(config: Config, links: Links) -> Arc<Agent> {
        Arc::new(Agent {
            config,
            links,
            started: Instant::now(),
            machine: Mutex::default(),
            stats: Mutex::default(),
            platform_polled_ready: Default::default(),
            actions: Arc::default(),
            terminate: watch::channel(false).0,
            microvm_id: Mutex::default(),
            failure_reported: tokio::sync::Notify::new(),
            warmup: Mutex::new(Warmup::NotStarted),
            generations: Generations::default(),
            last_routine: Mutex::new(Value::Null),
            last_hook_routine: Mutex::new(None),
            suspended_at: Mutex::new(None),
            run_failure: Mutex::new(None),
            restore_sources: std::sync::OnceLock::new(),
        })
    }

    pub fn links(&self) -> &Links {
        &self.links
    }

    pub fn state(&self) -> State {
        crate::lock(&self.machine).state()
    }

    /// Whether the platform (a build polling us, not a stranger) has asked `/ready`.
    pub fn ready_polled(&self) -> bool {
        self.platform_polled_ready
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves once `/ready` has answered 500.
    pub async fn failure_reported(&self) {
        self.failure_reported.notified().await
    }

    /// Resolves once `/terminate` has asked the agent to stop its app (and then exit).
    pub async fn terminate_requested(&self) {
        let _ = self.terminate.subscribe().wait_for(|t| *t).await;
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
        *self.links.health.borrow()
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
        let mut stats = crate::lock(&self.stats);
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
            self.platform_polled_ready
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let verdict = crate::lock(&self.machine).ready(self.health());
        match verdict {
            Verdict::Act => Answer::ok("ready"),
            Verdict::Failed => {
                // Ends a build-time linger once the platform has been told. A stranger's call
                // through the public endpoint gets the same answer but must not end the linger:
                // the platform's own next poll would then find nothing listening.
                if caller != Caller::Public {
                    self.failure_reported.notify_one();
                }
                let app = self.links.app.borrow().clone();
                Answer::with(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "failed",
                    json!({ "error": "the app has exited for good", "last_exit": app.last_exit, "restarts": app.restarts }),
                )
            }
            Verdict::NotYet(why) => {
                let probe = crate::lock(&self.links.last_probe).clone();
                Answer::with(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not-ready",
                    json!({ "error": why, "last_probe": probe }),
                )
            }
            other => unreachable!("ready verdict {other:?}"),
        }
    }

    /// Starts the stop path and waits for the app to be gone until just before the deadline;
    /// then answers either way and lets the stop finish. A failed acknowledgement is reported (the answer is still 200: see `fail_policy`).
    async fn terminate(&self, path: &str, deadline: Instant) -> Answer {
        let first = crate::lock(&self.machine).terminate() == Verdict::Act;
        let mut unacknowledged = None;
        let mut app = None;
        if first {
            // The app hears of it first (it may want to flush), then the stop begins.
            let outcome = self.tell_app(Event::Terminate, None, None, deadline).await;
            app = self.forward_to_app(path, Bytes::new(), deadline).await;
            self.terminate.send_replace(true);
            if !outcome.ok() {
                unacknowledged = Some(outcome);
            }
        }
        let mut answer = if self.config.app.is_none() {
            Answer::ok(if first {
                "terminating"
            } else {
                "already-terminating"
            })
        } else {
            let mut app = self.links.app.clone();
            let gone = tokio::time::timeout_at(deadline, app.wait_for(|a| a.pid.is_none())).await;
            let view = self.links.app.borrow().clone();
            match gone {
                Ok(_) => Answer::with(
                    StatusCode::OK,
                    "stopped",
                    json!({ "exit_code": view.last_exit_code }),
                ),
                Err(_) => Answer::with(StatusCode::OK, "stopping", json!({ "pid": view.pid })),
            }
        };
        if let Some(app) = app {
            let refused = app.refused;
            answer.extra["app"] = app.json;
            if let Some(e) = refused {
                answer.extra["stop"] = json!(answer.outcome);
                answer.extra["error"] = json!(format!("{e}; terminating anyway"));
                answer.status = StatusCode::INTERNAL_SERVER_ERROR;
                answer.outcome = "app-refused";
            }
        }
        if let Some(outcome) = unacknowledged {
            answer.extra["stop"] = json!(answer.outcome);
            answer.extra["error"] = json!(format!(
                "the app did not acknowledge: {}; terminating anyway",
                outcome.summary()
            ));
            answer.extra["failed"] = json!(outcome.failed);
            answer.status = StatusCode::INTERNAL_SERVER_ERROR;
            answer.outcome = "not-acknowledged";
        }
        answer
    }

    async fn acting(self: &Arc<Self>, hook: Hook, body: Bytes, deadline: Instant) -> Answer {
        // The warm-up holds the action guard for as long as it runs (minutes, maybe): the
        // platform's polls meanwhile get their answer at once instead of waiting out the budget.
        if hook == Hook::Validate && *crate::lock(&self.warmup) == Warmup::Running {
            return Answer::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "warming-up",
                "the warm-up requests are still running; ask again",
            );
        }
        let Ok(guard) = tokio::time::timeout_at(deadline, self.actions.clone().lock_owned()).await
        else {
            return Answer::error(
                busy_status(hook),
                "busy",
                "an earlier hook is still working; its work did not finish in time",
            );
        };
        let verdict = {
            let mut m = crate::lock(&self.machine);
            match hook {
                Hook::Validate => m.validate(self.health()),
                Hook::Run => m.run(&body),
                Hook::Resume => m.resume(),
                Hook::Suspend => m.suspend(),
                Hook::Ready | Hook::Terminate => unreachable!("not an acting hook"),
            }
        };
        match verdict {
            Verdict::Act => {}
            Verdict::Replay => return self.replay(),
            Verdict::Already => return Answer::ok("already"),
            Verdict::Ignored(why) => {
                return Answer::with(StatusCode::OK, "ignored", json!({ "reason": why }))
            }
            Verdict::NotYet(why) => {
                return Answer::error(StatusCode::SERVICE_UNAVAILABLE, "not-ready", why)
            }
            Verdict::Failed => {
                return Answer::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "failed",
                    "the app has failed for good",
                )
            }
            Verdict::Conflict(why) => return Answer::error(StatusCode::CONFLICT, "conflict", why),
        }
        let agent = self.clone();
        let work = async move {
            let answer = agent.act(hook, body, deadline).await;
            drop(guard);
            answer
        };
        match budget::within(deadline, work).await {
            Ok(answer) => answer,
            Err(Missed::Overrun) if hook == Hook::Validate => Answer::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "warming-up",
                "the warm-up requests are still running; ask again",
            ),
            Err(Missed::Overrun) => Answer::error(
                busy_status(hook),
                "timeout",
                "the hook's work did not finish inside its budget; it goes on in the background",
            ),
            Err(Missed::Panicked) => Answer::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal-error",
                "the hook's work failed (a bug: see the agent's log)",
            ),
        }
    }

    /// A `/run` with the body of the one that acted. It does not act again, and it answers what
    /// that one did: a replay of a failed `/run` is the same failure, never a success that did
    /// not happen. (Running the routine again would not help: the platform ends a VM whose `/run`
    /// failed, and a local caller who retries gets the reason.)
    fn replay(&self) -> Answer {
        match &*crate::lock(&self.run_failure) {
            None => Answer::ok("replay"),
            Some((status, outcome, extra)) => {
                let mut extra = extra.clone();
                extra["replay"] = json!(true);
                Answer::with(*status, outcome, extra)
            }
        }
    }

    /// The work of an acting hook, after the state machine said yes.
    async fn act(&self, hook: Hook, body: Bytes, deadline: Instant) -> Answer {
        let answer = self.act_inner(hook, body, deadline).await;
        if hook == Hook::Run && !answer.status.is_success() {
            *crate::lock(&self.run_failure) =
                Some((answer.status, answer.outcome, answer.extra.clone()));
        }
        answer
    }

    async fn act_inner(&self, hook: Hook, body: Bytes, deadline: Instant) -> Answer {
        let generation = match hook {
            Hook::Run => {
                if let Err(answer) = self.run(&body) {
                    return answer;
                }
                self.hook_generation(Event::Run, &[&body], deadline).await
            }
            Hook::Validate => return self.validate(deadline).await,
            Hook::Resume => self.hook_generation(Event::Resume, &[], deadline).await,
            Hook::Suspend => return self.suspend(deadline).await,
            Hook::Ready | Hook::Terminate => unreachable!("not an acting hook"),
        };
        let frozen = (hook == Hook::Resume)
            .then(|| crate::lock(&self.suspended_at).take().map(Clocks::since))
            .flatten();
        match generation {
            Ok(g) => Answer::with(
                StatusCode::OK,
                if hook == Hook::Run { "ok" } else { "resumed" },
                json!({ "generation": g.generation, "id": g.id, "microvm_id": g.microvm_id, "kernel_reseed": g.kernel_reseed, "kernel_crng": g.kernel_crng, "since_suspend": frozen }),
            ),
            Err(answer) => answer,
        }
    }

    /// Tells the app, scrubs the secrets marked for it, and notes when we were frozen. A secret
    /// that could not be scrubbed is a failure (it stays on disk through the freeze), reported
    /// as such; whether it answers non-200 is `fail_policy`'s call.
    async fn suspend(&self, deadline: Instant) -> Answer {
        let outcome = self.tell_app(Event::Suspend, None, None, deadline).await;
        let mut scrubbed = crate::secrets::scrub(&self.config.secrets, &self.config.state_dir);
        // The app's seed goes the way of a scrub_on_suspend secret: a new one comes on /resume.
        match std::fs::remove_file(self.config.state_dir.join(routine::SEED_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                scrubbed.failed.push(crate::secrets::Failure {
                    name: "(seed)".into(),
                    reason: format!("cannot remove it: {e}"),
                })
            }
            _ => {}
        }
        *crate::lock(&self.suspended_at) = Some(Clocks::now());
        // The agent keeps no outbound connection (every client request uses a fresh one), so
        // there is nothing of ours to drop before the freeze.
        if !scrubbed.failed.is_empty() {
            let names: Vec<&str> = scrubbed.failed.iter().map(|f| f.name.as_str()).collect();
            for f in &scrubbed.failed {
                tracing::error!(secret = %f.name, reason = %f.reason, "a secret could not be scrubbed before the freeze");
            }
            return Answer::with(
                StatusCode::INTERNAL_SERVER_ERROR,
                "scrub-failed",
                json!({
                    "error": format!("secrets not scrubbed (still on disk): {}; {}", names.join(", "), scrubbed.failed[0].reason),
                    "scrubbed": scrubbed.removed,
                    "not_scrubbed": names,
                }),
            );
        }
        if let Err(answer) = self.check_ack(Event::Suspend, &outcome) {
            return answer;
        }
        Answer::with(
            StatusCode::OK,
            "suspended",
            json!({ "scrubbed": scrubbed.removed }),
        )
    }

    /// Starts the warm-up on the first call and reports on it. The hook's deadline bounds the
    /// wait: a warm-up that takes longer answers 503 (the platform asks again) and goes on.
    async fn validate(&self, deadline: Instant) -> Answer {
        let requests = &self.config.validate;
        let start = {
            let mut w = crate::lock(&self.warmup);
            let start = *w == Warmup::NotStarted;
            if start {
                *w = Warmup::Running;
            }
            start
        };
        if start {
            // The validate VM is a clone too: it gets its own generation before the warm-up, so
            // the requests exercise the app as it will run after /run.
            if let Err(answer) = self.hook_generation(Event::Validate, &[], deadline).await {
                *crate::lock(&self.warmup) = Warmup::Failed(
                    answer.extra["error"]
                        .as_str()
                        .unwrap_or("the routine failed")
                        .to_string(),
                );
                return answer;
            }
            tracing::info!(
                requests = requests.requests.len(),
                repeat = requests.repeat,
                "warm-up started"
            );
            // Each request may take longer than one poll: the warm-up outlives the polls.
            let per_request = self.config.hooks.validate_timeout.max(WARMUP_REQUEST_LIMIT);
            let result = probe::warm_up(requests, per_request).await;
            let mut w = crate::lock(&self.warmup);
            *w = match result {
                Ok(n) => {
                    tracing::info!(sent = n, "warm-up passed");
                    Warmup::Passed(n)
                }
                Err(e) => {
                    tracing::error!(error = %e, "warm-up failed");
                    Warmup::Failed(e)
                }
            };
        }
        match crate::lock(&self.warmup).clone() {
            Warmup::Passed(n) => {
                Answer::with(StatusCode::OK, "valid", json!({ "warmup_requests": n }))
            }
            Warmup::Failed(e) => Answer::error(StatusCode::INTERNAL_SERVER_ERROR, "invalid", e),
            Warmup::Running | Warmup::NotStarted => Answer::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "warming-up",
                "the warm-up requests are still running",
            ),
        }
    }

    /// Writes the payload and the VM id; `Err` is the answer when they cannot be written.
    fn run(&self, body: &[u8]) -> Result<(), Answer> {
        let parsed = run_body::parse(body);
        let dir = &self.config.state_dir;
        let written = state_files::write_atomic(
            &dir.join("run-payload"),
            &parsed.payload,
            0o600,
            self.app_owner(),
        )
        .and_then(|()| match &parsed.microvm_id {
            Some(id) => {
                state_files::write_atomic(&dir.join("microvm-id"), id.as_bytes(), 0o644, None)
            }
            None => Ok(()),
        });
        if let Err(e) = written {
            // Without its payload the app would serve this VM with no per-VM data: dying is the
            // lesser harm, so this is the one case where /run fails.
            tracing::error!(error = %e, dir = %dir.display(), "cannot write the run payload");
            return Err(Answer::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "state-dir-error",
                format!("cannot write the run payload in {}: {e}", dir.display()),
            ));
        }
        *crate::lock(&self.microvm_id) = parsed.microvm_id;
        Ok(())
    }

    /// Files only the app may read belong to the app's user.
    fn app_owner(&self) -> Option<(u32, u32)> {
        self.links.run_as.as_ref().map(|u| (u.uid, u.gid))
    }

    /// `GET /generation[?after=N]`: the current generation, at once or, with `after`, once it
    /// exceeds N (at most `LONG_POLL` later: then the current one, and the client asks again).
    pub async fn generation_after(&self, after: Option<u64>) -> Value {
        if let Some(n) = after {
            let mut rx = self.generations.subscribe();
            let _ = tokio::time::timeout(
                LONG_POLL,
                rx.wait_for(|g| g.as_ref().map_or(0, |g| g.generation) > n),
            )
            .await;
        }
        match self.generations.current() {
            Some(g) => serde_json::to_value(g).unwrap_or_default(),
            None => json!({ "generation": 0 }),
        }
    }

    fn app_json(&self) -> Value {
        if self.config.app.is_none() {
            return Value::Null;
        }
        let mut v = serde_json::to_value(self.links.app.borrow().clone()).unwrap_or_default();
        if let Value::Object(m) = &mut v {
            m.insert(
                "last_probe".into(),
                json!(*crate::lock(&self.links.last_probe)),
            );
        }
        v
    }

    /// `GET /status`: what an operator (or a test) needs to see the agent's state at a glance.
    pub fn status(&self) -> Value {
        let state = crate::lock(&self.machine).state();
        let stats = crate::lock(&self.stats).clone();
        let mut hooks = Map::new();
        for hook in Hook::ALL {
            let s = &stats[hook as usize];
            let v = if s.count == 0 {
                json!({ "count": 0 })
            } else {
                json!({ "count": s.count, "last_status": s.last_status, "last_outcome": s.last_outcome, "last_elapsed_us": s.last_elapsed_us, "degraded": s.degraded, "last_error": s.last_error })
            };
            hooks.insert(hook.name().to_string(), v);
        }
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "state": state,
            "health": self.health(),
            "mode": if self.config.app.is_some() { "supervisor" } else { "sidecar" },
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "microvm_id": *crate::lock(&self.microvm_id),
            "generation": self.generations.current(),
            "last_routine": *crate::lock(&self.last_routine),
            "restore_detection": self.restore_sources.get(),
            "platform": crate::platform_env::get(),
            "log_lines_dropped": crate::logwriter::dropped_total(),
            "app": self.app_json(),
            "hooks": hooks,
        })
    }
}

/// The status for "not now": build-time hooks are polled, so 503 means "ask again"; for runtime
/// hooks, which are not retried on our behalf, it is a plain failure.
fn busy_status(hook: Hook) -> StatusCode {
    if hook.is_build_time() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}
