//! serval-cni: the CNI plugin binary. Reads the runtime's environment and stdin, prints the
//! result or the spec's error JSON on stdout, and exits non-zero on error.

use std::io::Read;

fn main() {
    let vars = std::env::vars().collect();
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        println!(r#"{{"cniVersion":"1.1.0","code":5,"msg":"cannot read stdin: {e}"}}"#);
        std::process::exit(1);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            println!(r#"{{"cniVersion":"1.1.0","code":999,"msg":"cannot start: {e}"}}"#);
            std::process::exit(1);
        }
    };
    let out = runtime.block_on(serval_agent::cni::run(&vars, &stdin));
    if !out.stdout.is_empty() {
        println!("{}", out.stdout);
    }
    std::process::exit(out.exit_code);
}
