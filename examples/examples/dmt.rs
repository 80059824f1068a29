//! The DMT demo (README's main command). Until the strategies issue lands it prints the
//! environment report and says that the demo is not built yet.

fn main() -> anyhow::Result<()> {
    sft_examples::init_logging();
    print!("{}", sft_examples::EnvReport::probe());
    println!("default model    : {}", sft_examples::default_model()?.display());
    anyhow::bail!("the DMT demo is not built yet (issue: training strategies and the end-to-end DMT demo)")
}
