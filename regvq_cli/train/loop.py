"""The training loop shared by the tokenizer trainer (regvq_cli.train.tokenizer) and the prior trainer
(regvq_cli.priors.training).

``Trainer`` owns what both do the same way: the step counter and data position, the loop (throughput, metric
windows, a time limit every rank agrees on, the log / sample / checkpoint cadence, the progress callback,
cleanup), the resume state ``state.pt``, ``metrics.jsonl`` and the export of the EMA weights to ``run_dir/model``.

A subclass calls ``super().__init__(run_dir, cfg)`` first (which keeps a copy of ``cfg`` as ``self.cfg``), asks
``self._init_source()`` where the weights start (fine-tuning from ``cfg.init``, or a resume state's record of it),
then builds ``self.model`` (loading the init weights), ``self.ema`` and ``self.opt``, calls ``self._resume()`` when
``self.state_path`` exists, wraps the model for DDP, and creates ``self.metrics`` last (creating it makes
``run_dir``, so a run that fails to set up leaves nothing behind). It supplies:

    train_step() -> dict        one optimisation step; the values to log, including ``self.unit``: how many
                                items (images, token grids) all ranks consumed in it
    sample() -> Path | None     sample grids from the EMA model (rank 0)
    model_card(final) -> str    the exported README.md, ending with ``self._card_end(rows)``
    _export_info() -> dict      what the exported config.json's ``info`` records besides the steps, the final
                                metrics and the training config
    _extra_state() -> dict      what it adds to the resume state
    _restore(state)             refuse a resume state from other settings; load what ``_extra_state`` added
    _window_extra() -> dict     fields it adds to each metrics record (optional)
    data_size() -> (int, str)   how many items its data holds now, and what to call them, e.g. (1200, "inputs"):
                                a resume on data of another size says so through ``on_note`` (optional)
    evaluate() -> dict          held-out scores, added to the record of each checkpoint step and the last (optional)

The config must have the bookkeeping fields both training configs share: max_steps, time_limit, log_every,
sample_every, checkpoint_every, ema_decay, device, seed, command and init.

Fine-tuning (``cfg.init``, a model spec the engine resolver accepts) starts a NEW run from a model's weights: step
0, a fresh optimizer, the EMA starting from those weights. A resume state takes precedence: a run folder that has
one continues it, whatever ``cfg.init`` says now, and ``cfg.init`` becomes what the state was started with (a
rerun continues, it never restarts from the init model, which need not exist any more). The exported config.json's
``info["init"]`` and the model card record the model a run was started from.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..engine.dist import all_gather, barrier
from ..errors import RegvqError, TrainingStopped
from .common import (METRICS_NAME, STATE_NAME, MetricsWriter, StopRequest, Throughput, all_reduce_mean,
                     any_rank, cleanup_distributed, flop_counter, load_optimizer_state,
                     load_state, peak_flops, read_metrics, rng_state, save_state, seed_everything, set_rng_state,
                     setup_distributed)

_NOT_COUNTED = object()  # no step's FLOPs counted yet


class Trainer:
    state_format = ""  # the resume state's "format"; a state of another format is refused
    what = ""  # "tokenizer" | "prior": what the messages call the state
    unit = "images"  # the key of train_step's item count; the metrics get f"{unit}_per_s"

    def __init__(self, run_dir: str | Path, cfg, offline: bool = False):
        self.cfg = copy.copy(cfg)  # fine-tuning fills in architecture fields; the caller's config stays as it was
        self.offline = offline  # models from the Hugging Face cache only: never touch the network
        self.run_dir = Path(run_dir)
        self.dist = setup_distributed(cfg.device)
        self.device = self.dist.device
        self.main = self.dist.is_main
        self.step = 0
        self.batches = 0  # batches consumed by this rank: the data position
        self.elapsed = 0.0  # training seconds, over all resumed runs
        self.state_path = self.run_dir / STATE_NAME
        self.metrics: MetricsWriter | None = None  # the subclass creates it last
        self._batch_iter = None  # the subclass's batch stream; None: (re)start it at self.batches
        self.stop_request: StopRequest | None = None  # while run() runs: whether SIGTERM or Ctrl-C asked it to stop
        self.window: dict[str, float] = {}  # sums of train_step's values since the last log
        self.pending: dict[str, torch.Tensor] = {}  # the same, for values still on the device (see _add_pending)
        self.window_steps = 0
        self.last_metrics: dict[str, float] = {}
        self.init_info: dict | None = None  # the model this run was started from: spec, resolved id, sha256
        self._state_cache: dict | None = None  # the resume state, read once
        self.peak_flops: float | None = None  # the GPU's bf16 FLOP/s that MFU divides by (None: unknown)
        self.notes: list[str] = []  # what a resume found worth saying (given to on_note when the run starts)
        self.on_note: Callable[[str], None] | None = None  # on_note(message), rank 0

    # ---- hooks with a default -------------------------------------------------------------------------------
    def _extra_state(self) -> dict:
        return {}

    def _restore(self, state: dict) -> None:
        pass

    def _window_extra(self) -> dict[str, float]:
        return {}

    def data_size(self) -> tuple[int, str] | None:
        return None

    def evaluate(self) -> dict[str, float]:
        return {}

    def run_settings(self):
        """The context a run's steps execute in (process-wide settings for the length of the run). Default: none."""
        return contextlib.nullcontext()

    def _flop_phase(self):
        """What decides the FLOPs of the next step (a step's FLOPs are counted again when it changes); a
        tokenizer's discriminator starting is one. Default: they never change."""
        return None

    @staticmethod
    def _sync(module: nn.Module, sync: bool):
        """DDP gradient all-reduce only on the last micro-batch of an accumulation."""
        if sync or not isinstance(module, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext()
        return module.no_sync()

    # ---- resume state -----------------------------------------------------------------------------------------
    def _state(self) -> dict:
        rngs = all_gather(rng_state())  # every rank's RNG, restored per rank on resume
        return {
            "format": self.state_format, "version": 1,
            "step": self.step, "batches": self.batches, "elapsed": self.elapsed,
            "world_size": self.dist.world_size, "config": dataclasses.asdict(self.cfg),
            "model": self.model.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
            "rng": rngs, "init": self.init_info, "data_size": self.data_size(), **self._extra_state(),
        }

    def save(self) -> None:
        state = self._state()  # collective: all ranks take part
        if self.main:
            save_state(self.state_path, state)
        barrier()

    def _read_state(self) -> dict | None:
        """The resume state (read once, checked to be this trainer's), or None when the run folder has none."""
        if self._state_cache is None and self.state_path.exists():
            state = load_state(self.state_path)
            if state.get("format") != self.state_format:
                raise RegvqError(f"{self.state_path} is not a {self.what} training state; use another run directory")
            self._state_cache = state
        return self._state_cache

    def _init_source(self, expect: tuple[str, ...], config_of_state: Callable[[dict], object]):
        """Where the weights start: ``(architecture config, init model)``.

        - a resume state: the state decides. A run it records as started from a model gives that model's config
          (``config_of_state(state)``) and no init model (the state holds the weights); ``cfg.init`` becomes the
          state's. A run from scratch gives ``(None, None)``.
        - no state, ``cfg.init`` set: the model, loaded on the CPU (``expect``: the model types this trainer
          takes), and its config.
        - no state, no ``cfg.init``: ``(None, None)``, a run from scratch.
        """
        state = self._read_state()
        if state is not None:
            self.cfg.init = state["config"].get("init")
            self.init_info = state.get("init")
            return (config_of_state(state) if self.cfg.init else None), None
        if not self.cfg.init:
            return None, None
        from ..engine.checkpoint import file_sha256, weights_path
        from ..engine.resolve import load

        model = load(self.cfg.init, expect=expect, offline=self.offline)
        self.init_info = {"spec": str(self.cfg.init), "id": model.regvq_id,
                          "sha256": file_sha256(weights_path(model.regvq_path))}
        return model.config, model

    def _resume(self) -> None:
        state = self._read_state()
        self._state_cache = None  # the weights are about to be copied: do not keep a second copy
        self._restore(state)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        load_optimizer_state(self.opt, state["opt"])  # in the layout of this run's weights
        self.step, self.batches, self.elapsed = int(state["step"]), int(state["batches"]), float(state["elapsed"])
        was, now = state.get("data_size"), self.data_size()
        if was is not None and now is not None and tuple(was) != tuple(now):  # files added or removed since
            self.notes.append(f"{self.run_dir} was trained on {was[0]} {was[1]} up to step {self.step}; the data "
                              f"holds {now[0]} now, and the run goes on with it as it is")
        # the data position in items: a global batch is the ranks' micro-batches together
        was_batch = int(state.get("config", {}).get("batch_size", self.cfg.batch_size))
        if was_batch != self.cfg.batch_size:
            self.notes.append(f"{self.run_dir} took batches of {was_batch} up to step {self.step}; it goes on with "
                              f"{self.cfg.batch_size} from the same place in the data")
        if state["world_size"] == self.dist.world_size and was_batch == self.cfg.batch_size:
            set_rng_state(state["rng"][self.dist.rank])
        else:  # other ranks or batches: the data position still holds (in items); reseed per step
            seed_everything(self.cfg.seed * 7919 + self.step, self.dist.rank)
            was_global, now_global = state["world_size"] * was_batch, self.dist.world_size * self.cfg.batch_size
            self.batches = self.batches * was_global // now_global

    # ---- logging and export -----------------------------------------------------------------------------------
    def _add_pending(self, values: dict) -> None:
        """Add one step's tensor values (losses, statistics) to the window's sums where they are: a step need not
        wait for the GPU. They reach the host at the next log or checkpoint (_flush_pending)."""
        for k, v in values.items():
            v = torch.as_tensor(v).detach().float()
            self.pending[k] = self.pending[k] + v if k in self.pending else v

    def _flush_pending(self) -> None:
        """Bring the pending sums to the host (the one wait for the GPU per log) and stop on a non-finite loss
        before anything is logged or saved with it."""
        if self.pending:
            keys = list(self.pending)
            sums = torch.stack([self.pending[k].to(self.device).reshape(()) for k in keys]).tolist()
            for k, v in zip(keys, sums):
                self.window[k] = self.window.get(k, 0.0) + v
            self.pending = {}
        loss = self.window.get("loss")
        if loss is not None and not math.isfinite(loss):
            advice = "lower the learning rate (--lr)"
            if not self.cfg.grad_clip:  # a clip already set is no advice: it did not stop this
                advice += " or clip the gradient norm (--grad-clip)"
            if self.state_path.exists():
                then = "the last checkpoint is kept: rerun with that change to resume from it"
            else:
                then = "no checkpoint was saved yet: rerun with that change to start again"
            raise RegvqError(f"the loss became {loss} by step {self.step}: {advice}; {then}")

    def _log(self, throughput: Throughput, evaluate: bool = False) -> dict[str, float]:
        """Average the window over its steps and the ranks, write one metrics record (with ``evaluate()``'s
        held-out scores when asked), start a new window."""
        self._flush_pending()
        avg = {k: v / max(self.window_steps, 1) for k, v in self.window.items()}
        avg = all_reduce_mean(avg, self.device)
        avg.pop(self.unit, None)  # reported as a rate instead
        items_per_s, flop_per_s = throughput.rate()
        # model FLOPs per second of this process (one GPU), and that as a fraction of the GPU's bf16 peak
        speed = {"tflops": flop_per_s / 1e12} if flop_per_s else {}
        if flop_per_s and self.peak_flops:
            speed["mfu"] = flop_per_s / self.peak_flops
        scores = self.evaluate() if evaluate else {}
        throughput.t0 = time.perf_counter()  # the evaluation's seconds are not the next window's training
        record = {"step": self.step, **avg, **scores, **self._window_extra(), f"{self.unit}_per_s": items_per_s,
                  **speed, "elapsed_s": self.elapsed, "time": time.time()}
        self.metrics.write(record)
        self.window, self.window_steps = {}, 0
        self.last_metrics = record
        return record

    def _trained_with(self, command: str) -> str:
        """"trained with `COMMAND`", or "fine-tuned from `MODEL` with `COMMAND`" for a run started from a model."""
        if self.init_info:
            return f"fine-tuned from `{self.init_info['id']}` with `{command}`"
        return f"trained with `{command}`"

    def _card_end(self, rows: list[str]) -> list[str]:
        """The model card's last lines: the EMA note, the final metrics table, the command, the config."""
        cfg = self.cfg
        command = cfg.command or " ".join(shlex.quote(a) for a in sys.argv)
        init = []
        if self.init_info:
            init = [f"- fine-tuned from: `{self.init_info['id']}` (weights sha256 {self.init_info['sha256'][:16]}...); "
                    "steps count from the start of the fine-tuning"]
        return [
            *init,
            f"- exported weights: EMA (decay {cfg.ema_decay})", "",
            "## Final metrics (last logging window, training batches)", "",
            "| metric | value |", "|---|---|", *rows, "",
            "## Command", "", "```", command, "```", "",
            "## Training config", "", "```json", json.dumps(dataclasses.asdict(cfg), indent=2), "```",
        ]

    def export(self) -> Path:
        """The EMA weights as a model folder ``run_dir/model`` (written by rank 0)."""
        from ..engine.checkpoint import save_model

        folder = self.run_dir / "model"
        if self.main:
            final = self.last_metrics or (read_metrics(self.run_dir / METRICS_NAME) or [{}])[-1]
            info = {**self._export_info(), **({"init": self.init_info} if self.init_info else {}), "steps": self.step,
                    "final_metrics": {k: v for k, v in final.items() if isinstance(v, (int, float))},
                    "train_config": dataclasses.asdict(self.cfg)}
            save_model(self.ema.model, folder, card=self.model_card(final), info=info)
        barrier()
        return folder

    # ---- the loop ---------------------------------------------------------------------------------------------
    def run(self, callback: Callable[[int, dict], None] | None = None) -> Path:
        """Train to ``max_steps`` (or the time limit), then export; ``callback(step, metrics)`` on rank 0.

        SIGTERM or Ctrl-C stops it after the current step with a checkpoint and raises TrainingStopped: rerunning
        resumes there, so a pre-empted or interrupted run loses nothing."""
        cfg = self.cfg
        if self.main and self.on_note is not None:
            for note in self.notes:
                self.on_note(note)
        self.metrics.keep_until(self.step)  # a killed run's records past its checkpoint are logged again
        try:
            with StopRequest() as request, self.run_settings():
                self.stop_request = request
                throughput = Throughput()
                self.peak_flops = peak_flops(self.device)
                step_flops, counted_phase = 0.0, _NOT_COUNTED
                t_last = time.perf_counter()
                stop = interrupted = False
                if cfg.time_limit is not None and self.step > 0:  # a resumed run that reached its limit: no step
                    stop = any_rank(self.elapsed >= cfg.time_limit, self.device)
                while self.step < cfg.max_steps and not stop:
                    phase = self._flop_phase()
                    if phase != counted_phase:  # count one step's FLOPs (the others do the same work)
                        with flop_counter() as counter:
                            m = self.train_step()
                        step_flops, counted_phase = float(counter.total), phase
                    else:
                        m = self.train_step()
                    now = time.perf_counter()
                    self.elapsed += now - t_last
                    t_last = now
                    throughput.add(int(m[self.unit]), step_flops)
                    for k, v in m.items():
                        self.window[k] = self.window.get(k, 0.0) + v
                    self.window_steps += 1
                    if cfg.time_limit is not None:  # every rank stops at the same step
                        stop = any_rank(self.elapsed >= cfg.time_limit, self.device)
                    if self.dist.world_size == 1:
                        interrupted = request.requested
                    elif self.step % cfg.log_every == 0:  # ranks may see the signal at different steps: agree
                        interrupted = any_rank(request.requested, self.device)
                    stop = stop or interrupted
                    done = stop or self.step >= cfg.max_steps
                    checkpoint = self.step % cfg.checkpoint_every == 0 or done
                    if self.step % cfg.log_every == 0 or checkpoint:
                        self._log(throughput, evaluate=checkpoint and not interrupted)
                    paused = time.perf_counter()
                    if cfg.sample_every > 0 and not interrupted and (self.step % cfg.sample_every == 0 or done):
                        self.sample()  # its seconds count: the time limit bounds the run's wall time
                    if checkpoint:
                        self._flush_pending()  # never save weights a non-finite loss has reached
                        self.save()
                    throughput.t0 += time.perf_counter() - paused  # but not in the training's images/s and MFU
                    if callback is not None and self.main:
                        callback(self.step, {**self.last_metrics, **m, "step": self.step})
            if interrupted:
                raise TrainingStopped(f"stopped at step {self.step} of {cfg.max_steps}; its checkpoint is in "
                                      f"{self.state_path}: run the same command again to resume",
                                      request.signum or signal.SIGTERM)
            return self.export()
        finally:
            self._batch_iter = None  # shuts DataLoader workers down
            cleanup_distributed(self.dist)
