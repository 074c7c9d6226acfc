//! vswitch-cni: the CNI plugin. The runtime executes it with the `CNI_*` environment
//! and the network configuration on stdin; it prints a result or an error object on
//! stdout and exits 0 or 1.

use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let input = std::io::stdin().read_to_end(&mut stdin).map(|_| stdin);
    let env: Vec<(String, String)> = std::env::vars().collect();
    let outcome = vswitch_cni::run(&env, input);
    if let Some(out) = &outcome.stdout {
        println!("{out}");
    }
    if outcome.success { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
