//! Policy compile at scale (`serval_policy::fixtures::cluster`: 1,000 policies over 1,000
//! endpoints, IPv4): a full compile, and the recompile after one pod's label changes (what
//! the agent does on that event). Run: `cargo bench -p serval-policy --bench compile`.

use serval_policy::compile::compile;
use serval_policy::fixtures::cluster;

fn main() {
    divan::main();
}

#[divan::bench(sample_count = 20)]
fn full_compile(b: divan::Bencher) {
    let inputs = cluster();
    b.bench(|| compile(divan::black_box(&inputs), false));
}

#[divan::bench(sample_count = 20)]
fn one_label_change(b: divan::Bencher) {
    let mut inputs = cluster();
    inputs.local[17].labels.insert("app".into(), "app42".into());
    b.bench(|| compile(divan::black_box(&inputs), false));
}

#[divan::bench(sample_count = 20)]
fn one_label_change_incremental(b: divan::Bencher) {
    let mut inputs = cluster();
    let mut compiler = serval_policy::compile::IncrementalCompiler::new(false);
    compiler.update(&inputs);
    let mut flip = false;
    b.bench_local(|| {
        // The pod moves between two apps, so every update is one label change.
        flip = !flip;
        let app = if flip { "app42" } else { "app17" };
        inputs.local[17].labels.insert("app".into(), app.into());
        compiler.update(divan::black_box(&inputs)).chains.len()
    });
}
