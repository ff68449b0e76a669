"""Cog predictor with the input schema of the Replicate MusicGen model; all model work lives in the engine."""

import asyncio
import collections
import logging
import os
import shutil
import tempfile
import typing as tp

from cog import BaseRunner, CancelationException, Input, Path, concurrent, current_scope

from engine.api import (
    MAX_PROMPT_CHARS,
    MAX_TOP_K,
    NORMALIZATION_STRATEGIES,
    OUTPUT_FORMATS,
    BatchRequest,
    Engine,
    EngineConfig,
    RequestError,
    params,
)
from streaming.app.config import ServerConfig
from streaming.formats import write_output
from weights.demo import ensure_default_checkpoint

logger = logging.getLogger("predict")

# The most predictions Cog hands this container at once (it runs COG_MAX_CONCURRENCY of them, which `cog build`
# sets from this): the engine decodes up to MUSICGEN_MAX_PREDICTIONS (by default COG_MAX_CONCURRENCY) together in
# shared forwards, and the rest wait for a slot.
MAX_CONCURRENT_PREDICTIONS = 8
PROGRESS_POLL_SECONDS = 0.25


class Predictor(BaseRunner):
    def setup(self, weights: tp.Optional[str] = None) -> None:
        """Loads the checkpoint once: `weights` / COG_WEIGHTS (path or URL), else weights/DEFAULT or the demo."""
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        source = str(weights) if weights else os.environ.get("COG_WEIGHTS") or None
        if source is None:
            ensure_default_checkpoint()
        config = ServerConfig.from_env()
        self.engine = Engine.load(source, config=EngineConfig.from_env())
        # Cog reads a returned file after run() ends, before that slot takes the next prediction: when one starts,
        # up to (slots - 1) others may have finished unread, so that many of the newest outputs are kept (none with
        # one slot: each prediction removes the previous one's files) and older ones are removed
        self.outputs: collections.deque[Path] = collections.deque()
        self.outputs_kept = _cog_slots() - 1
        from streaming.app.server import serve_inside_cog

        # the jam sidecar shares this process and this engine (unless JAM_PORT=0); a SIGTERM drains it first
        serve_inside_cog(self.engine, config)

    @concurrent(max=MAX_CONCURRENT_PREDICTIONS)
    async def run(
        self,
        prompt: tp.Optional[str] = Input(description="A description of the music you want to generate.",
                                         default=None, max_length=MAX_PROMPT_CHARS),
        input_audio: tp.Optional[Path] = Input(
            description="An audio file that will influence the generated music. If `continuation` is `True`, the "
                        "generated music will be a continuation of the audio file. Otherwise, the generated music "
                        "will mimic the audio file's melody.",
            default=None),
        duration: int = Input(description="Duration of the generated audio in seconds.", default=8,
                              **params.limits(params.Duration)),
        continuation: bool = Input(
            description="If `True`, generated music will continue `melody`. Otherwise, generated music will mimic "
                        "`audio_input`'s melody.",
            default=False),
        continuation_start: int = Input(description="Start time of the audio file to use for continuation.",
                                        default=0, **params.limits(params.ContinuationStart)),
        continuation_end: tp.Optional[int] = Input(
            description="End time of the audio file to use for continuation. If -1 or None, will default to the "
                        "end of the audio clip.",
            default=None, **params.limits(params.ContinuationEnd)),
        multi_band_diffusion: bool = Input(
            description="If `True`, the EnCodec tokens will be decoded with MultiBand Diffusion.", default=False),
        normalization_strategy: str = Input(description="Strategy for normalizing audio.", default="loudness",
                                            choices=list(NORMALIZATION_STRATEGIES)),
        top_k: int = Input(description="Reduces sampling to the k most likely tokens.", default=250,
                          **params.limits(params.TopK), le=MAX_TOP_K),
        top_p: float = Input(
            description="Reduces sampling to tokens with cumulative probability of p. When set to `0` (default), "
                        "top_k sampling is used.",
            default=0.0, **params.limits(params.TopP)),
        temperature: float = Input(
            description="Controls the 'conservativeness' of the sampling process. Higher temperature means more "
                        "diversity.",
            default=1.0, **params.limits(params.Temperature)),
        classifier_free_guidance: int = Input(
            description="Increases the influence of inputs on the output. Higher values produce lower-varience "
                        "outputs that adhere more closely to inputs.",
            default=3, **params.limits(params.Guidance, int)),
        output_format: str = Input(description="Output format for generated audio.", default="wav",
                                   choices=list(OUTPUT_FORMATS)),
        seed: tp.Optional[int] = Input(
            description="Seed for random number generator. If None or -1, a random seed will be used.",
            default=None, **params.limits(params.Seed)),
    ) -> Path:
        self._remove_old_outputs()
        try:
            request = BatchRequest(
                prompt=prompt, input_audio=input_audio, duration=duration, continuation=continuation,
                continuation_start=continuation_start, continuation_end=continuation_end,
                multi_band_diffusion=multi_band_diffusion, normalization_strategy=normalization_strategy,
                top_k=top_k, top_p=top_p, temperature=temperature, classifier_free_guidance=classifier_free_guidance,
                output_format=output_format, seed=seed)
            job = await asyncio.to_thread(self.engine.generate, request)  # decodes input audio: off the loop
        except RequestError as exc:
            raise ValueError(str(exc)) from None
        logger.info("Using seed %d (%s generation, %d s)", job.prepared.seed, job.prepared.mode, duration)
        if self.engine.is_demo:
            logger.warning("The demo checkpoint has random weights: this output is noise, not music.")
        try:
            result = await self._wait(job)
        except (asyncio.CancelledError, CancelationException):
            job.cancel()
            raise
        out_dir = Path(tempfile.mkdtemp(prefix="musicgen-output-"))
        self.outputs.append(out_dir)
        out = await asyncio.to_thread(write_output, result.wav, result.sample_rate, normalization_strategy,
                                      output_format, out_dir / "output")
        scope = current_scope()
        scope.record_metric("audio_seconds", round(result.audio_seconds, 3))
        scope.record_metric("generation_seconds", round(result.generation_seconds, 3))
        scope.record_metric("real_time_factor", round(result.real_time_factor, 4))
        scope.record_metric("seed", result.seed)
        scope.record_metric("weight_format", self.engine.weight_format)
        logger.info("wrote %.2f s of audio in %.2f s (real-time factor %.3f)", result.audio_seconds,
                    result.generation_seconds, result.real_time_factor)
        return Path(out)

    @staticmethod
    async def _wait(job):
        """The job's result, logging its progress; other predictions run on the loop meanwhile."""
        reported = None
        while not job.future.done():
            await asyncio.sleep(PROGRESS_POLL_SECONDS)
            if job.progress is not None and job.progress != reported:
                reported = job.progress
                logger.info("generated %d / %d steps", *reported)
        return job.future.result()

    def _remove_old_outputs(self) -> None:
        while len(self.outputs) > self.outputs_kept:
            shutil.rmtree(self.outputs.popleft(), ignore_errors=True)


def _cog_slots() -> int:
    """How many predictions Cog runs at once in this container (COG_MAX_CONCURRENCY, at most the decorator's;
    EngineConfig.from_env has already refused one that is not an integer)."""
    return max(1, min(MAX_CONCURRENT_PREDICTIONS, int(os.environ.get("COG_MAX_CONCURRENCY", "1"))))
