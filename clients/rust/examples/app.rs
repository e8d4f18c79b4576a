//! The app the integration tests run under the real agent: a generator it keeps, two callbacks
//! (`MVA_RUST_TEST_APP`: `ok`, `error`, `panic`, `hang`), suspend and terminate, each writing
//! what it saw under `MVA_RUST_TEST_OUT`.

use std::io::Write;
use std::sync::Mutex;

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

static RNG: Mutex<Option<ChaCha20Rng>> = Mutex::new(None);

fn write(name: &str, text: &str) {
    let dir = std::env::var("MVA_RUST_TEST_OUT").unwrap();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{dir}/{name}"))
        .unwrap();
    writeln!(f, "{text}").unwrap();
}

fn main() {
    let mode = std::env::var("MVA_RUST_TEST_APP").unwrap_or_default();
    *RNG.lock().unwrap() = Some(ChaCha20Rng::from_seed([1; 32]));
    microvm_agent_client::on_new_generation(|_| {
        *RNG.lock().unwrap() = Some(ChaCha20Rng::from_seed(microvm_agent_client::seed_material()));
        write("order", "first");
        Ok(())
    });
    microvm_agent_client::on_new_generation(move |g| {
        write("order", "second");
        write(
            "generations",
            &format!(
                "{}_{}_{}",
                g.number,
                g.id.clone().unwrap_or_default(),
                g.process_seed.is_some()
            ),
        );
        let draw = RNG.lock().unwrap().as_mut().unwrap().next_u64();
        write("draws", &draw.to_string());
        if let Some(deadline) = g.deadline {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            write("budgets", &left.as_millis().to_string());
        }
        if g.reason.as_deref() == Some("run") {
            match mode.as_str() {
                "error" => return Err("the app's callback broke".into()),
                "panic" => panic!("the app's callback panicked"),
                "hang" => loop {
                    std::thread::park();
                },
                _ => {}
            }
        }
        Ok(())
    });
    microvm_agent_client::on_suspend(|g| {
        write("events", &format!("suspend_{}", g.number));
        Ok(())
    });
    microvm_agent_client::on_terminate(|g| {
        write("events", &format!("terminate_{}", g.number));
        Ok(())
    });
    write("started", "yes");
    loop {
        std::thread::park();
    }
}
