//! `distillery generate <model> --prompt ...`: text from a model, with a KV
//! cache; greedy by default, or sampled with temperature and top-p.

use super::{EXIT_FAILED, EXIT_INVALID, EXIT_OK};
use clap::Args;
use distillery_engine::Device;
use distillery_ops::backend::{OnBackend, on_device};
use distillery_ops::generate::{Sampling, generate};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct GenerateArgs {
    /// A GGUF file or a Hugging Face model folder (a Model artifact is one).
    model: PathBuf,
    /// The text to continue.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// New tokens at most.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceArg,
    /// Also write the logits of every prompt position to this file, as a
    /// NumPy `.npy` of float32 `[prompt tokens, vocab]` (to compare with
    /// other tools; `--max-tokens 0` writes only these).
    #[arg(long, value_name = "FILE")]
    logits: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
    Auto,
}

struct Task {
    args: GenerateArgs,
}

impl OnBackend for Task {
    type Output = anyhow::Result<()>;
    fn run<B: distillery_ops::backend::ComputeBackend>(
        self,
        device: B::Device,
    ) -> anyhow::Result<()> {
        let args = self.args;
        let (model, assets) = distillery_ops::loader::load_model::<B>(&args.model, &device)?;
        let tokenizer = assets
            .tokenizer
            .ok_or_else(|| anyhow::anyhow!("{} has no tokenizer", args.model.display()))?;
        let prompt = if args.chat {
            let template = assets
                .tokenizer_config
                .as_ref()
                .map(distillery_ops::io::chat::ChatTemplate::from_tokenizer_config)
                .transpose()?
                .flatten()
                .ok_or_else(|| anyhow::anyhow!("the model has no chat template"))?;
            let messages = serde_json::json!([{"role": "user", "content": args.prompt}]);
            template.render(&messages, true)?
        } else {
            args.prompt.clone()
        };
        let ids = tokenizer
            .encode(prompt.as_str(), false)
            .map_err(|e| anyhow::anyhow!("cannot tokenize the prompt: {e}"))?
            .get_ids()
            .to_vec();
        anyhow::ensure!(!ids.is_empty(), "the prompt is empty");
        if let Some(path) = &args.logits {
            let logits = model.forward(distillery_ops::model::tokens_tensor(&[&ids], &device));
            let [_, seq, vocab] = logits.dims();
            let values = logits
                .into_data()
                .to_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("logits are not f32: {e:?}"))?;
            super::npy::write_f32(path, &[seq, vocab], &values)?;
        }
        let sampling = Sampling {
            max_new_tokens: args.max_tokens,
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
        };
        let mut stop = model.config.eos_ids();
        if args.chat
            && let Some(id) = tokenizer.token_to_id("<|im_end|>")
        {
            stop.push(id);
        }
        // Decode everything generated so far and print what is new, so that
        // characters split over several tokens come out whole.
        let mut generated: Vec<u32> = Vec::new();
        let mut printed = 0;
        let mut stdout = std::io::stdout();
        generate(&model, &ids, &sampling, &stop, |token| {
            generated.push(token);
            if let Ok(text) = tokenizer.decode(&generated, true)
                && text.len() > printed
                && text.is_char_boundary(printed)
            {
                let _ = write!(stdout, "{}", &text[printed..]);
                let _ = stdout.flush();
                printed = text.len();
            }
        });
        println!();
        Ok(())
    }
}

pub fn generate_command(args: GenerateArgs) -> u8 {
    if !(0.0..=1.0).contains(&args.top_p) || args.top_p == 0.0 {
        eprintln!("error: --top-p must be in (0, 1], found {}", args.top_p);
        return EXIT_INVALID;
    }
    if args.temperature < 0.0 {
        eprintln!(
            "error: --temperature must be >= 0, found {}",
            args.temperature
        );
        return EXIT_INVALID;
    }
    let requested = match args.device {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda => Device::Cuda,
        DeviceArg::Auto => Device::Auto,
    };
    let device = match distillery_ops::device::resolve(requested) {
        Ok(d) => d,
        Err(message) => {
            eprintln!("error: {message}");
            return EXIT_INVALID;
        }
    };
    match on_device(device, Task { args }).and_then(|r| r) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_FAILED
        }
    }
}
