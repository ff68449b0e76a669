"""Generate one file from the command line, with the same engine and semantics as the Cog predictor (a transport
like predict.py, kept here so that `python -m generate` stays the one command to try the engine).

    python -m generate --prompt "lo-fi hip hop beat" --duration 4 --out demo.wav
"""

import argparse
import logging
from pathlib import Path

from engine.api import (
    MAX_DURATION_SECONDS,
    NORMALIZATION_STRATEGIES,
    OUTPUT_FORMATS,
    BatchRequest,
    Engine,
    EngineConfig,
    RequestError,
)
from streaming.formats import write_output

logger = logging.getLogger("musicgen")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default=None)
    parser.add_argument("--input-audio", type=Path, default=None)
    parser.add_argument("--duration", type=int, default=8, help=f"seconds, 1..{MAX_DURATION_SECONDS}")
    parser.add_argument("--continuation", action="store_true")
    parser.add_argument("--continuation-start", type=int, default=0)
    parser.add_argument("--continuation-end", type=int, default=None)
    parser.add_argument("--multi-band-diffusion", action="store_true")
    parser.add_argument("--normalization-strategy", default="loudness", choices=NORMALIZATION_STRATEGIES)
    parser.add_argument("--top-k", type=int, default=250)
    parser.add_argument("--top-p", type=float, default=0.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--classifier-free-guidance", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--weights", default=None, help="checkpoint directory, file or URL (default: weights/)")
    parser.add_argument("--out", type=Path, default=Path("out.wav"), help="output file; its suffix picks wav/mp3")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    fmt = args.out.suffix.lstrip(".") or "wav"
    if fmt not in OUTPUT_FORMATS:
        parser.error(f"--out must end in one of: {', '.join('.' + f for f in OUTPUT_FORMATS)}")
    engine = Engine.load(args.weights, config=EngineConfig.from_env())
    try:
        request = BatchRequest(
            prompt=args.prompt, input_audio=args.input_audio, duration=args.duration, continuation=args.continuation,
            continuation_start=args.continuation_start, continuation_end=args.continuation_end,
            multi_band_diffusion=args.multi_band_diffusion, normalization_strategy=args.normalization_strategy,
            top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
            classifier_free_guidance=args.classifier_free_guidance, output_format=fmt, seed=args.seed)
        job = engine.generate(request)
    except RequestError as exc:
        parser.error(str(exc))
    logger.info("seed %d", job.prepared.seed)
    result = job.wait(on_progress=lambda done, total: logger.info("generated %d / %d steps", done, total))
    out = write_output(result.wav, result.sample_rate, args.normalization_strategy, fmt, args.out.with_suffix(""))
    notice = " (demo checkpoint: random weights, the audio is noise)" if engine.is_demo else ""
    logger.info("wrote %s: %.2f s at %d Hz, real-time factor %.3f%s", out, result.audio_seconds,
                result.sample_rate, result.real_time_factor, notice)
    engine.close()


if __name__ == "__main__":
    main()
