"""Contrastive pre-training of the multimodal model on the store's training split.

Why it is built this way:

* **Only split == "train" rows are trained on.** The store has one de-duplicated split; validation rows are
  used for the per-epoch contrastive loss only and test rows are never read, so every later evaluation of
  the embedding (retrieval, fine-tuning) is free of leakage. ``select_rows`` enforces it and the trainer
  re-checks it.
* **Rows** are the training materials with at least ``min_modalities`` of the configured modalities
  (a material with one modality has no positive pair). Missing modalities are masked, never imputed.
* **Exact resume.** The data order of epoch e is a permutation seeded by (seed, e) (``DistributedSampler``,
  also with one process), so a run interrupted after k batches of epoch e resumes at batch k+1 of the same
  permutation. Checkpoints hold the model (safetensors), optimizer, scheduler and every rank's RNG state;
  the DataLoader has its own generator so creating loaders never draws from the global RNG. Training 2
  epochs straight and 1 epoch + resume + 1 epoch give the same weights.
* **The logged LR is the LR actually applied**: it is read from ``optimizer.param_groups`` right before
  ``optimizer.step()``; the schedule's step convention is in mlcm_core.train.schedule.
* **One code path for 1 process and torchrun.** When ``WORLD_SIZE > 1`` the process group is initialised
  (NCCL on CUDA, gloo on CPU), the model is wrapped in DistributedDataParallel (``find_unused_parameters``:
  a batch may lack a modality, so its encoder gets no gradient on that rank) and each rank takes its share
  of every epoch's permutation. Only rank 0 writes files.

Output layout of ``config.out_dir``: ``config.yaml``, ``log.csv`` (step, epoch, phase, loss, lr,
logit_scale, scale, samples_per_s, elapsed_s), ``checkpoints/step-XXXXXXXX/`` and ``checkpoints/latest``.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from mlcm_core import modalities as _modalities
from mlcm_core.featurize.dataset import MultimodalBatch, MultimodalDataset, collate_multimodal
from mlcm_core.io import atomic_write_path
from mlcm_core.losses import get_loss
from mlcm_core.models.density import random_periodic_translation
from mlcm_core.models.dos import augment_dos
from mlcm_core.models.multimodal import MultimodalModel
from mlcm_core.models.checkpoint import (
    get_rng_state,
    latest_checkpoint,
    load_checkpoint,
    load_training_state,
    save_checkpoint,
    set_rng_state,
    write_latest_pointer,
)
from mlcm_core.train.config import TrainConfig
from mlcm_core.train.schedule import warmup_cosine_schedule

if TYPE_CHECKING:
    from mlcm_core.data.store import DatasetStore

__all__ = ["LOG_COLUMNS", "DistEnv", "compute_loss", "param_groups", "pretrain", "select_rows", "select_unpaired_rows",
           "setup_distributed"]

log = logging.getLogger(__name__)

LOG_COLUMNS = ["step", "epoch", "phase", "loss", "lr", "logit_scale", "scale", "samples_per_s", "elapsed_s"]


# ----------------------------------------------------------------------------------------------------------
# rows, distribution, optimisation helpers


def select_rows(store: DatasetStore, split: str, modalities: Sequence[str], min_modalities: int,
                max_rows: int | None = None, seed: int = 0) -> list[str]:
    """Ids of ``split`` rows having at least ``min_modalities`` of ``modalities`` (seeded subset if max_rows)."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}")
    t = store.table
    ids = t.loc[(t["split"] == split) & (_modality_count(t, modalities) >= min_modalities), "id"].astype(str).tolist()
    ids.sort()
    if max_rows is not None and len(ids) > max_rows:
        keep = np.random.default_rng(seed).permutation(len(ids))[:max_rows]
        ids = [ids[k] for k in sorted(keep)]
    return ids


def select_unpaired_rows(store: DatasetStore, split: str, modalities: Sequence[str], min_modalities: int) -> list[str]:
    """Sorted ids of ``split`` rows having at least one but fewer than ``min_modalities`` of ``modalities``:
    no positive pair, but negatives for the modality they have (``TrainConfig.unpaired_per_batch``)."""
    t = store.table
    count = _modality_count(t, modalities)
    return sorted(t.loc[(t["split"] == split) & (count >= 1) & (count < min_modalities), "id"].astype(str))


def _modality_count(table: pd.DataFrame, modalities: Sequence[str]) -> pd.Series:
    """How many of ``modalities`` each row of the store table has."""
    return sum(table[_modalities.get(m).store_flag].fillna(False).astype(bool).astype(int) for m in modalities)


def _assert_split(store: DatasetStore, ids: Sequence[str], split: str) -> None:
    t = store.table.set_index("id")
    wrong = [i for i in ids if t.at[i, "split"] != split]
    if wrong:
        raise RuntimeError(f"rows outside the {split!r} split selected for it: {wrong[:5]}")


@dataclass
class DistEnv:
    """Where this process runs: rank, world size, device, and whether it initialised the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup_distributed(device: str = "auto") -> DistEnv:
    """Read torchrun's environment; with WORLD_SIZE > 1 initialise the process group (NCCL or gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    if world <= 1:
        return DistEnv(device=torch.device("cuda" if use_cuda else "cpu"))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        here = True
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank,
                   device=torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"), initialized_here=here)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices/kernels only; none on biases, norms, embeddings, CLS, the temperature."""
    decay, no_decay, seen = [], [], set()
    norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.Embedding)
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            exempt = isinstance(module, norms) or p.ndim < 2 or name in ("cls", "logit_scale")
            (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def compute_loss(model: nn.Module, batch: MultimodalBatch, loss_name: str, loss_options: dict[str, Any],
                 modalities: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """Forward a batch and apply the named contrastive loss; returns (0-d loss, model outputs)."""
    out = model(batch)
    z = {m: out[m] for m in modalities}
    masks = {m: v for m, v in batch.modality_masks().items() if m in z}
    return get_loss(loss_name)(z, masks, out["logit_scale"], **loss_options), out


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _sum_over_ranks(env: DistEnv, values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (identity with one process)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=env.device)
    if env.distributed:
        dist.all_reduce(t)
    return t.tolist()


class _CsvLog:
    """Append-only CSV of training metrics, rank 0 only; on resume rows after the resumed step are dropped."""

    def __init__(self, path: Path, keep_up_to_step: int | None) -> None:
        self.path = path
        if keep_up_to_step is not None and path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_up_to_step]

            def rewrite(tmp: Path) -> None:
                with open(tmp, "w", newline="") as f:
                    w = csv.DictWriter(f, LOG_COLUMNS)
                    w.writeheader()
                    w.writerows(rows)

            atomic_write_path(path, rewrite)
        elif path.exists():
            path.unlink()
        new = not path.exists()
        self.file = open(path, "a", newline="")  # noqa: SIM115  (kept open for the run, closed in close())
        self.writer = csv.DictWriter(self.file, LOG_COLUMNS)
        if new:
            self.writer.writeheader()
            self.file.flush()

    def write(self, **row: Any) -> None:
        self.writer.writerow({k: row.get(k, "") for k in LOG_COLUMNS})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# ----------------------------------------------------------------------------------------------------------
# the trainer


class _Pretrainer:
    def __init__(self, store: DatasetStore, config: TrainConfig, env: DistEnv, progress: bool) -> None:
        self.store, self.cfg, self.env, self.progress = store, config, env, progress
        self.out = Path(config.out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.loss_fn = get_loss(config.loss)  # unknown names fail before any work
        self.model_config = config.model_config()
        self.modalities = self.model_config.modalities

        ids = {s: select_rows(store, s, self.modalities, config.min_modalities, config.max_rows, config.seed)
               for s in ("train", "val")}
        _assert_split(store, ids["train"], "train")
        _assert_split(store, ids["val"], "val")
        if not ids["train"]:
            raise ValueError(f"no training rows: no split=='train' material has >= {config.min_modalities} of "
                             f"{list(self.modalities)}")
        self.train_ids, self.val_ids = ids["train"], ids["val"]
        self.unpaired_ids = (select_unpaired_rows(store, "train", self.modalities, config.min_modalities)
                             if config.unpaired_per_batch > 0 else [])
        _assert_split(store, self.unpaired_ids, "train")
        self.train_ds = self._dataset(self.train_ids + self.unpaired_ids)  # paired rows first, then unpaired
        self.val_ds = self._dataset(self.val_ids) if self.val_ids else None

        torch.manual_seed(config.seed)  # identical initial weights on every rank
        model = MultimodalModel(self.model_config).to(env.device)
        self.model: nn.Module = model
        if env.distributed:
            self.model = nn.parallel.DistributedDataParallel(
                model, device_ids=[env.local_rank] if env.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr)
        self.steps_per_epoch = len(self._epoch_batches(0))
        self.total_steps = config.epochs * self.steps_per_epoch
        self.scheduler = warmup_cosine_schedule(self.optimizer, config.warmup_steps, self.total_steps,
                                                config.min_lr_ratio)

    def _dataset(self, ids: list[str]) -> MultimodalDataset:
        """Rank 0 featurizes (and fills the graph cache) first; the other ranks then read the cache."""
        def make() -> MultimodalDataset:
            return MultimodalDataset(self.store, ids, self.model_config.graph, self.cfg.graph_cache_dir,
                                     modalities=self.modalities, labels=[],
                                     progress=self.progress and self.env.is_main)

        ds = make() if self.env.is_main else None
        self.env.barrier()
        return ds if ds is not None else make()

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of epoch ``epoch``: a (seed, epoch) permutation of the paired rows split across
        ranks, each batch followed by ``unpaired_per_batch`` unpaired rows drawn with a (seed, epoch, rank) RNG."""
        n_paired = len(self.train_ids)
        sampler = DistributedSampler(range(n_paired), num_replicas=self.env.world_size, rank=self.env.rank,
                                     shuffle=True, seed=self.cfg.seed)
        sampler.set_epoch(epoch)
        idx = list(sampler)
        bs = self.cfg.batch_size
        batches = [idx[i : i + bs] for i in range(0, len(idx), bs)]
        if len(batches) > 1 and len(batches[-1]) < max(2, bs // 2):  # a tiny last batch has few negatives
            batches.pop()
        k = min(self.cfg.unpaired_per_batch, len(self.unpaired_ids))
        if k:
            rng = np.random.default_rng([self.cfg.seed, epoch, self.env.rank])
            batches = [b + (n_paired + rng.choice(len(self.unpaired_ids), k, replace=False)).tolist() for b in batches]
        return batches

    def _loader(self, dataset: MultimodalDataset, batches: list[list[int]]) -> DataLoader:
        return DataLoader(dataset, batch_sampler=batches, collate_fn=collate_multimodal,
                          num_workers=self.cfg.num_workers, generator=torch.Generator().manual_seed(self.cfg.seed),
                          pin_memory=self.env.device.type == "cuda")

    # -- checkpoints -------------------------------------------------------------------------------------
    def _rng_states(self) -> dict[str, Any]:
        state = get_rng_state()
        if not self.env.distributed:
            return {"rank0": state}
        gathered: list[Any] = [None] * self.env.world_size
        dist.all_gather_object(gathered, state)
        return {f"rank{r}": s for r, s in enumerate(gathered)}

    def _save(self, step: int, epochs_done: int, batches_done: int, metrics: dict[str, float]) -> Path:
        rng = self._rng_states()  # collective: every rank calls it
        path = self.ckpt_dir / f"step-{step:08d}"
        if self.env.is_main:
            save_checkpoint(path, _unwrap(self.model), step=step, epoch=epochs_done, optimizer=self.optimizer,
                            scheduler=self.scheduler, rng=rng, train_config=self.cfg,
                            extra={"batches_done_in_epoch": batches_done, "steps_per_epoch": self.steps_per_epoch,
                                   "total_steps": self.total_steps, "world_size": self.env.world_size,
                                   "train_rows": len(self.train_ids), "val_rows": len(self.val_ids), **metrics})
            write_latest_pointer(path)
            self._prune()
        self.env.barrier()
        return path

    def _prune(self) -> None:
        if self.cfg.keep_last <= 0:
            return
        old = sorted(p for p in self.ckpt_dir.glob("step-*") if p.is_dir())[: -self.cfg.keep_last]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)

    def _resume(self) -> tuple[int, int, int] | None:
        """Restore the latest checkpoint; returns (step, epochs done, batches done in the current epoch)."""
        ckpt = latest_checkpoint(self.out)
        if ckpt is None:
            return None
        info = load_checkpoint(ckpt, _unwrap(self.model), self.optimizer, self.scheduler,
                               map_location=self.env.device)
        rng = load_training_state(ckpt)["rng"] or {}
        mine = rng.get(f"rank{self.env.rank}")
        if mine is not None:
            set_rng_state(mine)
        else:
            torch.manual_seed(self.cfg.seed + 1 + self.env.rank + info.step)
        old = info.train_config or {}
        changed = sorted(k for k, v in self.cfg.to_dict().items() if k in old and _norm(old[k]) != _norm(v)
                         and k not in ("out_dir", "log_every", "checkpoint_every", "keep_last", "num_workers"))
        if changed or info.extra.get("world_size", 1) != self.env.world_size:
            warnings.warn(f"resuming {ckpt} with a different config ({changed}) or world size: the original "
                          "schedule is kept and the run is no longer identical to an uninterrupted one",
                          RuntimeWarning, stacklevel=3)
        return info.step, info.epoch, int(info.extra.get("batches_done_in_epoch", 0))

    # -- loop --------------------------------------------------------------------------------------------
    def _train_step(self, batch: MultimodalBatch) -> tuple[float, float, float]:
        """One optimizer update; returns (loss, lr applied, log scale after the update)."""
        cfg = self.cfg
        batch = batch.to(self.env.device, non_blocking=True)
        if cfg.augment_density and "density" in self.modalities and bool(batch.modality_masks()["density"].any()):
            batch.inputs["density"] = random_periodic_translation(batch.inputs["density"])
        if cfg.augment_dos and "dos" in self.modalities and bool(batch.modality_masks()["dos"].any()):
            batch.inputs["dos"] = augment_dos(batch.inputs["dos"], **cfg.augment_dos_options)
        amp = cfg.amp and self.env.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext():
            loss, _ = compute_loss(self.model, batch, cfg.loss, cfg.loss_options, self.modalities)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        lr = float(self.optimizer.param_groups[0]["lr"])  # the LR this update applies
        self.optimizer.step()
        self.scheduler.step()
        core = _unwrap(self.model)
        core.clamp_logit_scale_()
        return float(loss.detach()), lr, float(core.logit_scale.detach())

    @torch.no_grad()
    def _validate(self) -> float:
        if self.val_ds is None:
            return float("nan")
        model = _unwrap(self.model)
        model.eval()
        sampler = DistributedSampler(self.val_ds, num_replicas=self.env.world_size, rank=self.env.rank, shuffle=False)
        idx = list(sampler)
        batches = [idx[i : i + self.cfg.batch_size] for i in range(0, len(idx), self.cfg.batch_size)]
        if len(batches) > 1 and len(batches[-1]) < 2:  # a 1-row batch has no negatives: merge it
            tail = batches.pop()
            batches[-1] = batches[-1] + tail
        total, count = 0.0, 0.0
        for batch in self._loader(self.val_ds, batches):
            loss, _ = compute_loss(model, batch.to(self.env.device), self.cfg.loss, self.cfg.loss_options,
                                   self.modalities)
            total, count = total + float(loss) * len(batch), count + len(batch)
        model.train()
        total, count = _sum_over_ranks(self.env, [total, count])
        return total / count if count else float("nan")

    def run(self, resume: bool, stop_after_steps: int | None) -> Path:
        cfg, env = self.cfg, self.env
        if not resume and latest_checkpoint(self.out) is not None:
            raise FileExistsError(f"{self.out} already holds checkpoints: pass resume=True to continue that run, "
                                  "or choose another out_dir")
        if env.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            cfg.to_yaml(self.out / "config.yaml")
        state = self._resume() if resume else None
        step, start_epoch, skip = state if state is not None else (0, 0, 0)
        if state is None:
            torch.manual_seed(cfg.seed + 1 + env.rank)  # dropout / augmentation streams differ per rank
        csv_log = _CsvLog(self.out / "log.csv", step if state is not None else None) if env.is_main else None
        if env.is_main:
            log.info("pre-training on %d train rows (%s), %d val rows, %d steps/epoch x %d epochs, world %d",
                     len(self.train_ids), self.train_ds.modality_counts(), len(self.val_ids),
                     self.steps_per_epoch, cfg.epochs, env.world_size)
        last = latest_checkpoint(self.out) if state is not None else None
        start = time.perf_counter()
        try:
            for epoch in range(start_epoch, cfg.epochs):
                batches = self._epoch_batches(epoch)
                done_before, skip = skip, 0
                window = [0.0, 0.0, 0.0, time.perf_counter()]  # loss sum, samples, updates, t0
                self.model.train()
                for i, batch in enumerate(self._loader(self.train_ds, batches[done_before:]), start=done_before):
                    loss, lr, log_scale = self._train_step(batch)
                    step += 1
                    window[0] += loss
                    window[1] += len(batch)
                    window[2] += 1
                    if step % cfg.log_every == 0 or i + 1 == len(batches):
                        loss_sum, samples, updates = _sum_over_ranks(env, window[:3])
                        mean_loss, rate = loss_sum / updates, samples / max(time.perf_counter() - window[3], 1e-9)
                        if csv_log is not None:
                            csv_log.write(step=step, epoch=epoch + 1, phase="train", loss=mean_loss, lr=lr,
                                          logit_scale=log_scale, scale=math.exp(log_scale), samples_per_s=rate,
                                          elapsed_s=time.perf_counter() - start)
                        window = [0.0, 0.0, 0.0, time.perf_counter()]
                    last_in_epoch = i + 1 == len(batches)
                    stop = stop_after_steps is not None and step >= stop_after_steps
                    if (step % cfg.checkpoint_every == 0 or stop) and not last_in_epoch:
                        last = self._save(step, epoch, i + 1, {"train_loss": loss})
                        if stop:
                            return last
                val = self._validate()
                if csv_log is not None:
                    csv_log.write(step=step, epoch=epoch + 1, phase="val", loss=val,
                                  logit_scale=float(_unwrap(self.model).logit_scale.detach()),
                                  scale=math.exp(float(_unwrap(self.model).logit_scale.detach())),
                                  elapsed_s=time.perf_counter() - start)
                last = self._save(step, epoch + 1, 0, {"val_loss": val})
                if stop_after_steps is not None and step >= stop_after_steps:
                    return last
        finally:
            if csv_log is not None:
                csv_log.close()
        if last is None:  # resumed a finished run
            last = latest_checkpoint(self.out)
        return last


def _norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    return value


def _open_store(store: DatasetStore | str | Path) -> DatasetStore:
    if isinstance(store, (str, Path)):
        from mlcm_core import load_dataset

        return load_dataset(store)
    return store


def pretrain(store: DatasetStore | str | Path, config: TrainConfig, *, resume: bool = False,
             stop_after_steps: int | None = None, progress: bool = True) -> Path:
    """Contrastive pre-training; returns the final checkpoint directory.

    Args:
        store: an open DatasetStore or its path (opened with checksum verification).
        config: the run (see TrainConfig); ``config.out_dir`` receives config.yaml, log.csv, checkpoints/.
        resume: continue from ``out_dir``'s latest checkpoint (same step, optimizer, scheduler and RNG state);
            without a checkpoint the run starts from scratch.
        stop_after_steps: stop (after writing a checkpoint) once this many optimizer steps are done in total,
            as if the run were interrupted there; ``resume=True`` continues it.
        progress: tqdm bar while featurizing graphs.

    Under torchrun (WORLD_SIZE > 1) this initialises the process group itself; every rank must call it.
    Raises FileExistsError if ``out_dir`` already holds checkpoints and ``resume`` is False (no silent
    overwrite of a run), ValueError if no training row qualifies.
    """
    store = _open_store(store)
    env = setup_distributed(config.device)
    try:
        trainer = _Pretrainer(store, config, env, progress)
        return trainer.run(resume, stop_after_steps)
    finally:
        if env.initialized_here and dist.is_initialized():
            dist.destroy_process_group()
