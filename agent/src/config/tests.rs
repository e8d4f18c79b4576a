use std::ffi::OsString;

use super::*;

fn parse(toml_text: &str) -> Result<Config, ConfigError> {
    let table: toml::Table = toml_text.parse().expect("test TOML parses");
    from_table(&table, &Overrides::default(), None)
}

fn err_key(toml_text: &str) -> String {
    parse(toml_text).expect_err("config accepted").key
}

#[test]
fn empty_config_is_sidecar_with_platform_defaults() {
    let c = parse("").unwrap();
    assert!(c.app.is_none());
    assert_eq!(c.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(c.state_dir, PathBuf::from("/run/microvm-agent"));
    assert_eq!(c.hooks.run_timeout, Duration::from_secs(1));
    assert_eq!(c.hooks.ready_timeout, Duration::from_secs(30));
    assert_eq!(c.hooks.trust, Trust::Loopback);
    assert_eq!(c.notify.timeout, Duration::from_millis(800));
    assert_eq!(c.ready.interval, Duration::from_millis(10));
}

#[test]
fn full_design_example_parses() {
    let c = parse(
        r#"
listen = "0.0.0.0:9000"
state_dir = "/run/microvm-agent"
[app]
command = ["python3", "/app/app.py"]
user = "app"
workdir = "/app"
restart = "on-failure"
max_restarts = 5
stop_signal = "SIGTERM"
stop_timeout = "10s"
[ready]
http = "http://127.0.0.1:8080/healthz"
healthy_status = "200-399"
interval = "10ms"
[validate]
repeat = 3
[[validate.request]]
method = "POST"
url = "http://127.0.0.1:8080/execute"
body = '{"code": "print(1)"}'
headers = { "content-type" = "application/json" }
expect_status = 200
[hooks]
run_timeout = "1s"
trust = "loopback"
[entropy]
kernel = "auto"
[notify]
http = "http://127.0.0.1:8080/__lifecycle"
signal = "SIGUSR2"
exec = ["/app/on-lifecycle"]
restart_on = ["run"]
timeout = "800ms"
on_timeout = "fail"
[[secret]]
name = "session-key"
bytes = 32
encoding = "hex"
scrub_on_suspend = true
[[secret]]
name = "db-password"
exec = ["/app/fetch-secret", "db"]
"#,
    )
    .unwrap();
    let app = c.app.as_ref().unwrap();
    assert_eq!(
        app.command,
        vec![OsString::from("python3"), OsString::from("/app/app.py")]
    );
    assert_eq!(app.restart, Restart::OnFailure);
    assert_eq!(c.validate.requests.len(), 1);
    assert!(c.validate.requests[0].expect_status.contains(200));
    assert_eq!(c.notify.restart_on, vec![Event::Run]);
    assert_eq!(c.secrets.len(), 2);
    assert!(matches!(c.secrets[1].source, SecretSource::Exec { .. }));

    // --check output reads back to the same configuration.
    let rendered = c.to_string();
    let back = parse(&rendered).unwrap_or_else(|e| panic!("{e}\n{rendered}"));
    let mut expected = c.clone();
    // Bodies and header values are deliberately not printed.
    expected.validate.requests[0].body.clear();
    expected.validate.requests[0].headers.clear();
    assert_eq!(back, expected);
}

#[test]
fn every_bad_value_names_its_key() {
    let cases = [
        ("bogus = 1", "bogus"),
        ("[app]\nrestart = \"sometimes\"", "app.restart"),
        ("[app]\nstop_timeout = \"10\"", "app.stop_timeout"),
        ("[app]\nstop_timeout = \"10 parsecs\"", "app.stop_timeout"),
        ("[app]\nstop_signal = \"SIGFOO\"", "app.stop_signal"),
        ("[app]\ncommand = []", "app.command"),
        ("[app]\ncommand = [1]", "app.command[0]"),
        ("[app]\nuser = \"a b\"", "app.user"),
        ("[app]\nworkdir = \"rel\"", "app.workdir"),
        ("[app]\ntypo = 1", "app.typo"),
        ("[app]\ncapabilities = \"most\"", "app.capabilities"),
        (
            "[app]\ncapabilities = [\"CAP_NET_RAW\", \"CAP_FLY\"]",
            "app.capabilities",
        ),
        ("[app]\ncapabilities = 5", "app.capabilities"),
        (
            "[app]\nno_new_privileges = \"yes\"",
            "app.no_new_privileges",
        ),
        ("[identity]\nhostname = \"-bad\"", "identity.hostname"),
        ("[identity]\nhostname = \"has space\"", "identity.hostname"),
        ("[identity]\nboot_id = \"sometimes\"", "identity.boot_id"),
        ("[clock]\nstep = \"always\"", "clock.step"),
        ("listen = \"nowhere\"", "listen"),
        ("state_dir = \"relative\"", "state_dir"),
        ("log_format = \"xml\"", "log_format"),
        (
            "[ready]\nhttp = \"http://a:1/\"\ntcp = \"a:1\"",
            "ready.http",
        ),
        ("[ready]\nhttp = \"https://a/\"", "ready.http"),
        ("[ready]\ntcp = \"nope\"", "ready.tcp"),
        (
            "[ready]\nhttp = \"http://a:1/\"\nhealthy_status = \"399-200\"",
            "ready.healthy_status",
        ),
        ("[ready]\nhealthy_status = \"200\"", "ready.healthy_status"),
        ("[ready]\ninterval = \"0ms\"", "ready.interval"),
        ("[hooks]\nrun_timeout = \"61s\"", "hooks.run_timeout"),
        ("[hooks]\nready_timeout = \"500ms\"", "hooks.ready_timeout"),
        ("[hooks]\ntrust = \"everyone\"", "hooks.trust"),
        ("[entropy]\nkernel = \"maybe\"", "entropy.kernel"),
        ("[notify]\nsignal = \"SIGKILL\"", "notify.signal"),
        (
            "[notify]\nrestart_on = [\"reboot\"]",
            "notify.restart_on[0]",
        ),
        ("[notify]\ntimeout = \"950ms\"", "notify.timeout"),
        ("[notify]\non_timeout = \"panic\"", "notify.on_timeout"),
        ("[validate]\nrepeat = 0", "validate.repeat"),
        (
            "[[validate.request]]\nmethod = \"get\"\nurl = \"http://a:1/\"",
            "validate.request[0].method",
        ),
        (
            "[[validate.request]]\nmethod = \"GET\"",
            "validate.request[0].url",
        ),
        (
            "[[validate.request]]\nurl = \"http://a:1/\"\nexpect_status = 999",
            "validate.request[0].expect_status",
        ),
        (
            "[[validate.request]]\nurl = \"http://a:1/\"\nheaders = { \"bad header\" = \"x\" }",
            "validate.request[0].headers.\"bad header\"",
        ),
        // Found by the config fuzzer: an empty key is named, quoted.
        ("\"\" = 22222", "\"\""),
        (
            "[[secret]]\nname = \"../escape\"\nbytes = 8",
            "secret[0].name",
        ),
        ("[[secret]]\nname = \"a/b\"\nbytes = 8", "secret[0].name"),
        ("[[secret]]\nname = \"..\"\nbytes = 8", "secret[0].name"),
        ("[[secret]]\nname = \"k\"", "secret[0].bytes"),
        (
            "[[secret]]\nname = \"k\"\nbytes = 8\nexec = [\"x\"]",
            "secret[0].exec",
        ),
        ("[[secret]]\nname = \"k\"\nbytes = 0", "secret[0].bytes"),
        (
            "[[secret]]\nname = \"k\"\nexec = [\"x\"]\nencoding = \"hex\"",
            "secret[0].encoding",
        ),
        (
            "[[secret]]\nname = \"k\"\nbytes = 8\n[[secret]]\nname = \"k\"\nbytes = 8",
            "secret[1].name",
        ),
        ("app = 3", "app"),
    ];
    for (text, key) in cases {
        assert_eq!(err_key(text), key, "for config:\n{text}");
    }
}

#[test]
fn cli_and_env_override_the_file_and_name_their_source() {
    let dir = std::env::temp_dir().join(format!("mva-cfg-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    std::fs::write(
        dir.join("base.toml"),
        "listen = \"127.0.0.1:1\"\n[app]\ncommand = [\"from-file\"]\nmax_restarts = 1\n",
    )
    .unwrap();
    std::fs::write(dir.join("conf.d/20-b.toml"), "[app]\nmax_restarts = 3\n").unwrap();
    std::fs::write(
        dir.join("conf.d/10-a.toml"),
        "[app]\nmax_restarts = 2\nrestart = \"always\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("conf.d/ignored.txt"), "not toml").unwrap();
    let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
    let base = dir.join("base.toml").display().to_string();
    let confd = dir.join("conf.d").display().to_string();

    let Action::Run(c) = parse_args(args(&["-c", &base, "--config", &confd]), |_| None).unwrap()
    else {
        panic!()
    };
    let app = c.app.unwrap();
    assert_eq!(app.max_restarts, 3, "later drop-ins win");
    assert_eq!(app.restart, Restart::Always, "tables merge key by key");
    assert_eq!(app.command, vec![OsString::from("from-file")]);
    assert_eq!(c.files_read.len(), 3);

    let env = |k: &str| (k == "MICROVM_AGENT_LISTEN").then(|| "127.0.0.1:2".to_string());
    let Action::Run(c) = parse_args(args(&["-c", &base, "sh", "-c", "x"]), env).unwrap() else {
        panic!()
    };
    assert_eq!(c.listen.port(), 2, "env beats the file");
    assert_eq!(
        c.app.unwrap().command,
        args(&["sh", "-c", "x"]),
        "options stop at the first non-option"
    );
    let Action::Run(c) = parse_args(
        args(&["-c", &base, "--listen=127.0.0.1:3", "--", "-x"]),
        env,
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(c.listen.port(), 3, "CLI beats env");
    assert_eq!(c.app.unwrap().command, args(&["-x"]));

    let bad_env = |k: &str| (k == "MICROVM_AGENT_LISTEN").then(|| "bogus".to_string());
    assert_eq!(
        parse_args(args(&["-c", &base]), bad_env).unwrap_err().key,
        "MICROVM_AGENT_LISTEN"
    );
    assert_eq!(
        parse_args(args(&["--listen", "x"]), |_| None)
            .unwrap_err()
            .key,
        "--listen"
    );
    assert_eq!(
        parse_args(args(&["--bogus"]), |_| None).unwrap_err().key,
        "--bogus"
    );
    assert_eq!(
        parse_args(args(&["--listen"]), |_| None).unwrap_err().key,
        "--listen"
    );
    let bad_log = |k: &str| (k == "MICROVM_AGENT_LOG").then(|| "info,=[".to_string());
    assert_eq!(
        parse_args(args(&[]), bad_log).unwrap_err().key,
        "MICROVM_AGENT_LOG"
    );
    let missing = dir.join("missing.toml").display().to_string();
    assert_eq!(
        parse_args(args(&["-c", &missing]), |_| None)
            .unwrap_err()
            .key,
        "config"
    );
    std::fs::write(dir.join("broken.toml"), "a = \n").unwrap();
    let broken = dir.join("broken.toml").display().to_string();
    let e = parse_args(args(&["-c", &broken]), |_| None).unwrap_err();
    assert!(e.message.contains("line 1"), "{e}");
    assert!(matches!(
        parse_args(args(&["-V"]), |_| None).unwrap(),
        Action::Version
    ));
    assert!(matches!(
        parse_args(args(&["--check", "-c", &base]), |_| None).unwrap(),
        Action::Check(_)
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn privileges_identity_and_clock_read_back_from_check() {
    for text in [
        "[app]\ncommand = [\"x\"]\ncapabilities = [\"net_bind_service\", \"CAP_NET_RAW\"]\nno_new_privileges = false\n[identity]\nhostname = \"Sandbox\"\nboot_id = false\n[clock]\nstep = \"off\"",
        "[app]\ncapabilities = \"none\"",
        "[app]\ncommand = [\"x\"]\ncapabilities = \"all\"\n[identity]\nhostname = \"keep\"",
        "",
    ] {
        let c = parse(text).unwrap();
        let back = parse(&c.to_string()).unwrap_or_else(|e| panic!("{e}\n{c}"));
        assert_eq!(back, c, "{text}");
    }
    let c = parse("[app]\ncommand = [\"x\"]\ncapabilities = [\"net_bind_service\", \"CAP_NET_RAW\"]\n[identity]\nhostname = \"Sandbox\"").unwrap();
    assert_eq!(c.privileges.capabilities, (1 << 10) | (1 << 13));
    assert_eq!(c.hostname, Hostname::Prefix("sandbox".into()));
    let d = parse("").unwrap();
    assert_eq!(d.privileges.capabilities, crate::sys::caps::DOCKER_DEFAULT);
    assert_eq!(
        (d.hostname, d.boot_id, d.clock_step),
        (Hostname::Auto, MachineId::Auto, ClockStep::Auto)
    );
}
