//! `microvm-sim`: plays the Lambda MicroVMs platform's part on your machine, so that a broken
//! `/ready`, a hook over its budget or an entrypoint that does not stop shows up in seconds, not
//! after a cloud image build.
//!
//! ```text
//! microvm-sim [--hooks hooks.json] [--payload STR] [--microvm-id ID] [--suspend-for DUR]
//!             [--app-url http://host:port/path] [--host ADDR] [--build-timeout DUR]
//!             [--exit-within DUR] -- ENTRYPOINT [ARGS...]
//! microvm-sim                      # the embedded demo: the agent and a small app
//! ```
//! Exit code 0: no violation; 1: violations (or a failed build); 2: bad usage.

mod demo;
mod freeze;
mod hooks;
mod http;
mod platform;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use hooks::Hooks;
use platform::Options;

const USAGE: &str = "usage: microvm-sim [--hooks FILE] [--payload STR] [--microvm-id ID] [--suspend-for DUR] \
[--app-url http://HOST:PORT/PATH] [--host ADDR] [--build-timeout DUR] [--exit-within DUR] -- ENTRYPOINT [ARGS...]
       microvm-sim          (no arguments: the embedded demo)";

fn duration(flag: &str, s: &str) -> Result<Duration, String> {
    microvm_agent::config::values::duration(s).map_err(|e| format!("{flag}: {e}"))
}

fn parse(args: Vec<OsString>) -> Result<Options, String> {
    let mut o = Options {
        hooks: Hooks::default(),
        host: "127.0.0.1".into(),
        payload: String::new(),
        microvm_id: "microvm-sim0000000000001".into(),
        suspend_for: Duration::from_secs(1),
        app_url: None,
        build_timeout: Duration::from_secs(300),
        exit_within: Duration::from_secs(15),
        entrypoint: Vec::new(),
        env: Vec::new(),
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--" {
            o.entrypoint = it.collect();
            break;
        }
        let flag = a.to_string_lossy().into_owned();
        let mut value = || {
            it.next()
                .map(|v| v.to_string_lossy().into_owned())
                .ok_or(format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--hooks" => {
                let path = value()?;
                let text =
                    std::fs::read_to_string(&path).map_err(|e| format!("--hooks {path}: {e}"))?;
                o.hooks = Hooks::from_json(&text).map_err(|e| format!("--hooks {path}: {e}"))?;
            }
            "--payload" => o.payload = value()?,
            "--microvm-id" => o.microvm_id = value()?,
            "--suspend-for" => o.suspend_for = duration("--suspend-for", &value()?)?,
            "--build-timeout" => o.build_timeout = duration("--build-timeout", &value()?)?,
            "--exit-within" => o.exit_within = duration("--exit-within", &value()?)?,
            "--host" => o.host = value()?,
            "--app-url" => {
                let url = microvm_agent::config::values::http_url(&value()?)
                    .map_err(|e| format!("--app-url: {e}"))?;
                o.app_url = Some((url.host, url.port, url.path));
            }
            "-h" | "--help" => return Err(String::new()),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if o.entrypoint.is_empty() {
        return Err("no entrypoint (put it after --)".into());
    }
    Ok(o)
}

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match args.first().and_then(|a| a.to_str()) {
        // The demo's own processes: this binary playing the agent, and the demo app.
        Some("__agent") => return microvm_agent::cli::main(args.split_off(1)),
        Some("__demo-app") => demo::app(
            args.get(1)
                .and_then(|p| p.to_str()?.parse().ok())
                .unwrap_or(8080),
        ),
        _ => {}
    }
    if args.is_empty() {
        println!("microvm-sim demo: the agent supervising a small app, driven through the whole lifecycle\n");
        let (options, dir) = demo::options();
        let code = platform::run(&options);
        let generation = std::fs::read_to_string(dir.join("state/generation")).unwrap_or_default();
        if !generation.is_empty() {
            println!(
                "\nthe last published generation ({}/state/generation):\n  {}",
                dir.display(),
                generation.trim()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "\nnext: microvm-sim --hooks hooks.json -- microvm-agent -c your.toml -- your-app"
        );
        return ExitCode::from(code as u8);
    }
    match parse(args) {
        Ok(o) => ExitCode::from(platform::run(&o) as u8),
        Err(e) => {
            if !e.is_empty() {
                eprintln!("microvm-sim: {e}");
            }
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
