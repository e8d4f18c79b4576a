//! `microvm-sim`: plays the Lambda MicroVMs platform's part on your machine, as it was measured
//! on the live service, so that a broken `/ready`, a hook over its budget, a `/suspend` that
//! would kill the VM or an entrypoint that does not stop shows up in seconds, not after a cloud
//! image build. `microvm-sim --help` lists every option; with no arguments it runs a demo.
//! Exit code 0: no violation; 1: violations (or a failed build); 2: bad usage.

mod container;
mod demo;
mod freeze;
mod hooks;
mod http;
mod platform;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use container::Caps;
use hooks::Hooks;
use platform::Options;

const HELP: &str = "\
microvm-sim: the Lambda MicroVMs platform's side of an image, on your machine

usage: microvm-sim [OPTIONS] -- ENTRYPOINT [ARGS...]
       microvm-sim                 the embedded demo (the agent and a small app)

It starts ENTRYPOINT as the platform's container would (as root: the default capability set
0xa80425fb without CAP_SYS_ADMIN, RLIMIT_NOFILE 1024, the AWS_LAMBDA_MICROVM_IMAGE_* variables),
sends a TLS ClientHello to the hook port, polls /ready and calls /validate with the image
builder's headers, then /run, /suspend, a freeze of the whole process tree, /resume and
/terminate, each within its budget. A build hook answering neither 200 nor 503 fails the build;
a runtime hook answering non-200 terminates the VM (as a 500 /suspend does on the platform).

options (default in brackets):
  --hooks FILE           the JSON given to create-microvm-image --hooks [every hook enabled,
                         port 9000, the platform's default timeouts]
  --payload STR          runHookPayload of RunMicrovm, at most 4096 characters [none: the
                         field is left out of the /run body]
  --microvm-id ID        the microvmId in the /run body [microvm-<random uuid>]
  --suspend-for DUR      how long the VM stays frozen between /suspend and /resume; 0s skips
                         the freeze [1s]
  --caps default|all     the container's capabilities: the platform's default set, or
                         additionalOsCapabilities [\"ALL\"] [default]
  --region NAME          AWS_REGION and the builder's endpoint host [us-east-1]
  --image NAME           AWS_LAMBDA_MICROVM_IMAGE_NAME (and the ARN) [sim-image]
  --app-url URL          http://HOST:PORT/PATH of the app: /ready must not say 200 before
                         it answers [not checked]
  --host ADDR            where the hook port is [127.0.0.1]
  --build-timeout DUR    how long the build waits for /ready and /validate [300s]
  --exit-within DUR      how long the entrypoint has to exit after /terminate [15s]
  -h, --help             this text
  -V, --version          the version

exit status: 0 no violation, 1 violations or a failed build, 2 bad usage or no entrypoint
";

fn duration(flag: &str, s: &str) -> Result<Duration, String> {
    microvm_agent::config::values::duration(s).map_err(|e| format!("{flag}: {e}"))
}

/// What the command line asks for: a run, or a text to print and exit 0.
enum Parsed {
    Run(Box<Options>),
    Print(String),
}

fn parse(args: Vec<OsString>) -> Result<Parsed, String> {
    let mut o = Options {
        hooks: Hooks::default(),
        host: "127.0.0.1".into(),
        payload: None,
        microvm_id: format!("microvm-{}", http::uuid()),
        suspend_for: Duration::from_secs(1),
        app_url: None,
        build_timeout: Duration::from_secs(300),
        exit_within: Duration::from_secs(15),
        entrypoint: Vec::new(),
        env: Vec::new(),
        caps: Caps::Default,
        region: "us-east-1".into(),
        image: "sim-image".into(),
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
                let text = read_hooks_file(&path).map_err(|e| format!("--hooks {path}: {e}"))?;
                o.hooks = Hooks::from_json(&text).map_err(|e| format!("--hooks {path}: {e}"))?;
            }
            "--payload" => {
                let p = value()?;
                let n = p.chars().count();
                if n > platform::MAX_PAYLOAD_CHARS {
                    return Err(format!(
                        "--payload: {n} characters; RunMicrovm refuses a runHookPayload over {}",
                        platform::MAX_PAYLOAD_CHARS
                    ));
                }
                o.payload = Some(p);
            }
            "--microvm-id" => o.microvm_id = value()?,
            "--suspend-for" => o.suspend_for = duration("--suspend-for", &value()?)?,
            "--build-timeout" => o.build_timeout = duration("--build-timeout", &value()?)?,
            "--exit-within" => o.exit_within = duration("--exit-within", &value()?)?,
            "--host" => o.host = value()?,
            "--region" => o.region = value()?,
            "--image" => o.image = value()?,
            "--caps" => {
                o.caps = match value()?.as_str() {
                    "default" => Caps::Default,
                    "all" => Caps::All,
                    other => {
                        return Err(format!("--caps: {other:?} is not \"default\" or \"all\""))
                    }
                }
            }
            "--app-url" => {
                let url = microvm_agent::config::values::http_url(&value()?)
                    .map_err(|e| format!("--app-url: {e}"))?;
                o.app_url = Some((url.host, url.port, url.path));
            }
            "-h" | "--help" => return Ok(Parsed::Print(HELP.into())),
            "-V" | "--version" => {
                return Ok(Parsed::Print(format!(
                    "microvm-sim {}\n",
                    env!("CARGO_PKG_VERSION")
                )))
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if o.entrypoint.is_empty() {
        return Err("no entrypoint (put it after --)".into());
    }
    Ok(Parsed::Run(Box::new(o)))
}

/// The `--hooks` file: a regular file of at most 1 MiB (the agent's own bound on its
/// configuration). A FIFO would hang the simulator, `/dev/zero` would eat its memory.
fn read_hooks_file(path: &str) -> Result<String, String> {
    use std::io::Read;
    const MAX: u64 = 1024 * 1024;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX + 1).read_to_string(&mut text))
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX {
        return Err(format!("larger than {MAX} bytes"));
    }
    Ok(text)
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
        Ok(Parsed::Run(o)) => ExitCode::from(platform::run(&o) as u8),
        Ok(Parsed::Print(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("microvm-sim: {e}\n(microvm-sim --help lists every option)");
            ExitCode::from(2)
        }
    }
}
