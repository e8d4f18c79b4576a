//! Wiring: the one place that builds every part of the agent and hands each what it needs. No
//! part builds another; what crosses a layer upwards is bound here, as a callback (the restore
//! watcher's, the supervisor's `LingerWhen`).

use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::hooks::lifecycle::State;
use crate::hooks::{self, Agent};
use crate::supervise::handle::AppHandle;
use crate::supervise::launcher::Launcher;
use crate::supervise::reaper::Reaper;
use crate::supervise::supervisor::Command;
use crate::supervise::supervisor::Supervisor;
use crate::{clone, supervise, sys, EX_USAGE};

/// Everything the event loop drives.
pub struct Parts {
    /// The hooks' shared state, served by the hook port.
    pub agent: Arc<Agent>,
    /// The app's supervisor; `None` in sidecar mode.
    pub supervisor: Option<Supervisor>,
    /// The one `waitpid`, run on every SIGCHLD.
    pub reaper: Arc<Reaper>,
    /// Requests from the hooks (restart for `restart_on`).
    pub commands: mpsc::UnboundedReceiver<Command>,
    /// What SIGTERM and `/terminate` send the app (`[app] stop_signal`).
    pub stop_signal: Signal,
}

/// Builds the parts and starts the app; `Err` is the exit code when that cannot be done.
pub fn wire(config: Config, listener: &TcpListener) -> Result<Parts, i32> {
    // The command line refused an unsafe state directory before the port was bound; one the
    // system cannot give is not fatal: the hooks still answer, and the ones that need it say why.
    let state = sys::state_files::Handle::new(&config.state_dir, None);
    if let Err(e) = state.get() {
        tracing::error!(error = %e, dir = %config.state_dir.display(), "cannot prepare the state directory");
    }
    if std::process::id() != 1 {
        // Orphans of the app must still be reaped (and waited for) by us, not by the host's init.
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(error = %e, "cannot become a child subreaper; orphans go to init");
        }
    }
    let run_as = match config.app.as_ref().and_then(|a| a.user.as_ref()) {
        Some(spec) => match supervise::spawn::resolve_user(spec) {
            Ok(u) => Some(u),
            Err(e) => {
                crate::cli::complain(format_args!("configuration error: app.user: {e}"));
                return Err(EX_USAGE);
            }
        },
        None => None,
    };
    // The capability split: decided before anything is started, applied to every child.
    let plan = sys::caps::Plan::for_self(
        config.privileges.capabilities,
        config.privileges.no_new_privileges,
    );
    let report = split_privileges(&plan);
    let reaper = Arc::new(Reaper::default());
    let sidecar = config.app.is_none();
    let stop_signal = config
        .app
        .as_ref()
        .map_or(Signal::SIGTERM, |a| a.stop_signal);
    let (handle, publisher, commands) = AppHandle::new(sidecar);
    // The in-process reseed helpers, for the app the agent starts (a sidecar's app is started
    // by someone else, who can set the environment `--check` shows).
    let owner = run_as.as_ref().map(|u| (u.uid, u.gid));
    let setup = match &config.app {
        Some(app) if app.reseed_in_process => clone::inproc::setup::arrange(&state, owner),
        Some(_) => {
            clone::inproc::setup::socket_only(&state, owner, "off: [app] reseed_in_process = false")
        }
        None => clone::inproc::setup::Setup::off("off: no app (sidecar)"),
    };
    let inproc = Arc::new(clone::inproc::InProc::for_nofile(
        crate::supervise::spawn::nofile(),
        setup.arranged,
    ));
    let launcher = Launcher {
        reaper: reaper.clone(),
        run_as,
        caps: plan.child,
        state_dir: config.state_dir.clone(),
        before_app: setup.refresh,
        app_env: setup.env,
    };
    let (app, ready) = (config.app.clone(), config.ready.clone());
    let links = hooks::Links {
        app: handle,
        launcher: launcher.clone(),
        inproc: inproc.clone(),
    };
    // Which restore signals this VM offers: opened before the agent exists, so that it is
    // built complete (watched below, once it does).
    let sources = clone::restore::Sources::open();
    let found = hooks::Found {
        restore_sources: clone::restore::describe(&sources),
        privileges: Some(report),
    };
    let agent = Agent::with_state(config, links, state, found);
    if let Some(listener) = setup.listener {
        match tokio::net::UnixListener::from_std(listener) {
            Ok(listener) => {
                let gens = agent.clone();
                let current: clone::inproc::Current = Arc::new(move || {
                    let number = gens.generations().current()?.generation;
                    Some((number, clone::inproc::seed(gens.generations())?))
                });
                tokio::spawn(inproc.serve(listener, current));
            }
            Err(e) => tracing::warn!(error = %e, "in-process reseed: cannot serve its socket"),
        }
    }
    // An app gone for good lingers (so that `/ready` can say 500) while a build polls before
    // `/run`: the hooks know that, the supervisor does not.
    let hooks_view = agent.clone();
    let linger_when = Box::new(move || {
        matches!(hooks_view.state(), State::Booting | State::Ready) && hooks_view.ready_polled()
    });
    let mut supervisor =
        app.map(|app| Supervisor::new(app, ready, launcher, publisher, linger_when));
    if let Some(s) = &mut supervisor {
        if let Err(e) = s.start() {
            tracing::error!(error = %e.message, code = e.code, "cannot start the app");
            crate::cli::complain(format_args!("{}", e.message));
            return Err(e.code);
        }
    }
    let image = sys::platform_env::get();
    tracing::info!(
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        mode = if sidecar { "sidecar" } else { "supervisor" },
        image_name = image.and_then(|i| i.image_name.as_deref()).unwrap_or("-"),
        image_version = image.and_then(|i| i.image_version.as_deref()).unwrap_or("-"),
        on_platform = image.is_some(),
        "serving hooks"
    );
    let on_restore = agent.clone();
    tokio::spawn(clone::restore::watch(sources, move |source| {
        let agent = on_restore.clone();
        async move { agent.restore_detected(source).await }
    }));
    Ok(Parts {
        agent,
        supervisor,
        reaper,
        commands,
        stop_signal,
    })
}

/// Drops what the agent does not use when the app gets less than it holds (`sys::caps`), and
/// says what each side has. Never fatal: an agent that cannot drop its own keeps them, and
/// says so.
fn split_privileges(plan: &sys::caps::Plan) -> sys::caps::Report {
    if let (Some(keeps), Some(child)) = (plan.agent_keeps, plan.child) {
        if let Err(e) = sys::caps::drop_own(keeps, child.bounding, child.last_cap) {
            tracing::warn!(error = %e, "cannot drop the capabilities the agent does not use");
        }
    }
    let report = plan.report(sys::caps::Sets::of_self());
    if let Some(note) = &report.note {
        tracing::warn!(note = %note, "capabilities: the app gets what the agent holds");
    } else if report.split {
        tracing::info!(
            app = %report.app_names.join(","),
            agent = %report.agent_names.join(","),
            no_new_privileges = report.no_new_privileges,
            "capabilities split: the app gets less than the agent holds"
        );
    }
    report
}
