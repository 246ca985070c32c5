"""Data loading on lhotse, with the options of icefall's LibriSpeechAsrDataModule.

Cut sets come from `prepare.sh` stage 3 (data/fbank/librispeech_cuts_{part}.jsonl.gz,
features precomputed); noise for --enable-musan from data/fbank/musan_cuts.jsonl.gz.
A batch from the dataloaders is lhotse's K2SpeechRecognitionDataset dict:
  batch["inputs"]        (N, T, 80) float features, padded with LOG_EPS-like values
  batch["supervisions"]  {"text": [str], "num_frames": (N,), "cut": [Cut], ...}
"""

import argparse
import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lhotse import CutSet, load_manifest, load_manifest_lazy
from lhotse.dataset import (
    CutMix,
    DynamicBucketingSampler,
    K2SpeechRecognitionDataset,
    SimpleCutSampler,
    SpecAugment,
)
from torch.utils.data import DataLoader

from pruned_transducer_stateless4.frequency_warp import FrequencyWarp
from shared.utils import str2bool


def sampler_state_for_world_size(state: dict[str, Any], world_size: int) -> dict[str, Any]:
    """A sampler state saved by a run of N ranks, made loadable by one of
    `world_size` ranks (lhotse refuses a different world size).

    The resumed epoch goes on after the same amount of data: the N ranks had
    taken b batches each (N * b in all), so each of the M ranks skips
    round(N * b / M).  lhotse's bucket choice depends on the world size, so
    the rest of that epoch is not the batches the N ranks would have seen
    (some cuts may come twice or not at all in it); the epochs after it are
    the M-rank run's own order.  The same world size is returned unchanged.
    """
    saved = state["world_size"]
    if saved == world_size:
        return state
    state = copy.deepcopy(state)
    diagnostics = state["diagnostics"]
    epoch_stats = diagnostics["stats_per_epoch"][diagnostics["current_epoch"]]
    taken = epoch_stats["kept_batches"] + epoch_stats["discarded_batches"]
    skip = round(taken * saved / world_size)
    logging.warning(f"the training sampler was saved by {saved} rank(s) and resumes on "
                    f"{world_size}: after {taken} batches per rank ({taken * saved} in all) "
                    f"this epoch goes on after {skip} batches per rank, in the bucket order "
                    f"of {world_size} rank(s)")
    epoch_stats["kept_batches"], epoch_stats["discarded_batches"] = skip, 0
    state["world_size"] = world_size
    return state


class LibriSpeechAsrDataModule:
    def __init__(self, args: argparse.Namespace):
        self.args = args

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(
            title="ASR data related options",
            description="Batching, bucketing, augmentation and data loading.",
        )
        group.add_argument("--full-libri", type=str2bool, default=False,
                           help="Train on all LibriSpeech training parts (960 h) instead of "
                           "train-clean-100 only.")
        group.add_argument("--manifest-dir", type=Path, default=Path("data/fbank"),
                           help="Directory with the cut sets of prepare.sh stage 3.")
        group.add_argument("--max-duration", type=float, default=200.0,
                           help="Seconds of audio per batch (summed over its cuts); icefall's "
                           "default for a GPU (its RESULTS commands use 300 on 32 GB GPUs). "
                           "A CPU run wants small batches (run.sh passes 30).")
        group.add_argument("--bucketing-sampler", type=str2bool, default=True,
                           help="Group cuts of similar duration (DynamicBucketingSampler).")
        group.add_argument("--num-buckets", type=int, default=30,
                           help="Number of duration buckets of the bucketing sampler.")
        group.add_argument("--shuffle", type=str2bool, default=True,
                           help="Shuffle the training cuts every epoch.")
        group.add_argument("--drop-last", type=str2bool, default=True,
                           help="Drop the last incomplete training batch.")
        group.add_argument("--num-workers", type=int, default=2,
                           help="DataLoader worker processes (icefall's default). 0 loads in "
                           "the training process, which 2 CPU cores want (run.sh passes 0).")
        group.add_argument("--enable-spec-aug", type=str2bool, default=True,
                           help="Apply SpecAugment to training features.")
        group.add_argument("--spec-aug-time-warp-factor", type=int, default=80,
                           help="SpecAugment time warp factor; < 1 disables time warping.")
        group.add_argument("--spec-aug-num-frame-masks", type=int, default=10,
                           help="SpecAugment: time masks per utterance (icefall's 10).")
        group.add_argument("--spec-aug-frames-mask-size", type=int, default=100,
                           help="SpecAugment: the longest time mask, in frames (icefall's "
                           "100); all masks together cover at most 15%% of the frames.")
        group.add_argument("--frequency-warp-range", type=float, default=0.0,
                           help="Warp the frequency axis of each training utterance's features "
                           "by a factor drawn uniformly from [1 - r, 1 + r], anew every time "
                           "it is seen (VTLN-style: it sounds like another speaker); 0 turns "
                           "it off (icefall has no such option). Not applied to validation or "
                           "decoding.")
        group.add_argument("--enable-musan", type=str2bool, default=True,
                           help="Mix noise (MUSAN, or the generated noise set) into training cuts.")
        group.add_argument("--input-strategy", type=str, default="PrecomputedFeatures",
                           help="lhotse input strategy: PrecomputedFeatures or OnTheFlyFeatures.")

    # ------------------------------------------------------------- loaders --
    def train_dataloaders(
        self, cuts_train: CutSet, sampler_state_dict: dict[str, Any] | None = None,
        world_size: int | None = None, rank: int | None = None, seed: int = 0,
    ) -> DataLoader:
        args = self.args
        cut_transforms = []
        if args.enable_musan:
            musan_path = args.manifest_dir / "musan_cuts.jsonl.gz"
            if not musan_path.is_file():
                raise FileNotFoundError(
                    f"--enable-musan needs {musan_path}; run ./prepare.sh --stage 2 --stop-stage 3 "
                    "or pass --enable-musan false"
                )
            logging.info(f"mixing noise from {musan_path} into training cuts")
            cut_transforms.append(
                CutMix(cuts=load_manifest(musan_path), p=0.5, snr=(10, 20), preserve_id=True,
                       seed=seed)
            )
        input_transforms = self.train_input_transforms()
        dataset = K2SpeechRecognitionDataset(
            input_strategy=self._input_strategy(),
            cut_transforms=cut_transforms,
            input_transforms=input_transforms,
            return_cuts=True,
        )
        if args.bucketing_sampler:
            sampler = DynamicBucketingSampler(
                cuts_train, max_duration=args.max_duration, shuffle=args.shuffle,
                num_buckets=args.num_buckets, drop_last=args.drop_last,
                world_size=world_size, rank=rank, seed=seed,
            )
        else:
            sampler = SimpleCutSampler(
                cuts_train, max_duration=args.max_duration, shuffle=args.shuffle,
                drop_last=args.drop_last, world_size=world_size, rank=rank, seed=seed,
            )
        if sampler_state_dict is not None:
            logging.info("restoring the training sampler's state")
            sampler.load_state_dict(sampler_state_for_world_size(sampler_state_dict,
                                                                 world_size or 1))
        return DataLoader(dataset, sampler=sampler, batch_size=None,
                          num_workers=args.num_workers, persistent_workers=False)

    def train_input_transforms(self) -> list[Callable]:
        """The transforms of the training batches' (N, T, F) features, in order
        (validation and decoding batches get none)."""
        args = self.args
        input_transforms: list[Callable] = []
        if args.frequency_warp_range > 0:
            # Before SpecAugment, so that its feature masks are not warped.
            logging.info(f"warping training features' frequency axis by factors in "
                         f"[{1 - args.frequency_warp_range}, {1 + args.frequency_warp_range}]")
            input_transforms.append(FrequencyWarp(args.frequency_warp_range))
        if args.enable_spec_aug:
            # icefall's LibriSpeech settings: 2 feature masks of up to 27
            # bins, --spec-aug-num-frame-masks time masks of up to
            # --spec-aug-frames-mask-size frames (15% of the frames at most).
            input_transforms.append(
                SpecAugment(
                    time_warp_factor=args.spec_aug_time_warp_factor,
                    num_frame_masks=args.spec_aug_num_frame_masks,
                    frames_mask_size=args.spec_aug_frames_mask_size,
                    features_mask_size=27,
                    num_feature_masks=2,
                    max_frames_mask_fraction=0.15,
                )
            )
        return input_transforms

    def valid_dataloaders(self, cuts_valid: CutSet) -> DataLoader:
        return self.test_dataloaders(cuts_valid)

    def test_dataloaders(self, cuts: CutSet) -> DataLoader:
        dataset = K2SpeechRecognitionDataset(input_strategy=self._input_strategy(),
                                             return_cuts=True)
        # Not bucketed: a bucketing sampler needs more cuts than buckets, and
        # evaluation sets may be tiny subsets.
        sampler = SimpleCutSampler(cuts, max_duration=self.args.max_duration, shuffle=False)
        return DataLoader(dataset, sampler=sampler, batch_size=None,
                          num_workers=self.args.num_workers)

    def _input_strategy(self):
        from lhotse.dataset import OnTheFlyFeatures, PrecomputedFeatures

        from shared.features import make_fbank_extractor

        if self.args.input_strategy == "OnTheFlyFeatures":
            return OnTheFlyFeatures(make_fbank_extractor())
        if self.args.input_strategy == "PrecomputedFeatures":
            return PrecomputedFeatures()
        raise ValueError(f"unknown --input-strategy {self.args.input_strategy}")

    # ------------------------------------------------------------- cut sets --
    def _cuts(self, part: str) -> CutSet:
        path = self.args.manifest_dir / f"librispeech_cuts_{part}.jsonl.gz"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; run ./prepare.sh --stage 0 --stop-stage 3 first"
            )
        return load_manifest_lazy(path)

    def train_clean_100_cuts(self) -> CutSet:
        return self._cuts("train-clean-100")

    def train_all_shuf_cuts(self) -> CutSet:
        """All 960 h (icefall's --full-libri): the three training parts with their
        speed-perturbed copies, shuffled together by prepare.sh stage 3 into
        librispeech_cuts_train-all-shuf.jsonl.gz (as icefall's prepare.sh
        does), so that the sampler's shuffle buffer sees every part and
        perturbation factor from the start."""
        return self._cuts("train-all-shuf")

    def dev_clean_cuts(self) -> CutSet:
        return self._cuts("dev-clean")

    def test_clean_cuts(self) -> CutSet:
        return self._cuts("test-clean")

    def test_other_cuts(self) -> CutSet:
        return self._cuts("test-other")

    def cuts_by_name_or_path(self, name: str) -> CutSet:
        """A LibriSpeech part name (test-clean) or the path of any cut set."""
        path = Path(name)
        if path.suffix == ".gz" or path.suffix == ".jsonl":
            if not path.is_file():
                raise FileNotFoundError(f"cut set {path} not found")
            return load_manifest_lazy(path)
        return self._cuts(name)


def batch_features(
    batch: dict[str, Any], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, T, F), feature_lens (N,)) of a K2SpeechRecognitionDataset batch.

    lhotse may reorder the cuts of a batch (longest first), so `texts` and
    `cuts` must be read through the same supervision order: see `batch_texts`.
    """
    features = batch["inputs"].to(device)
    feature_lens = batch["supervisions"]["num_frames"].to(device)
    return features, feature_lens


def batch_texts(batch: dict[str, Any]) -> list[str]:
    return list(batch["supervisions"]["text"])


@dataclass
class CutFilterCounts:
    """What `TrainingCutFilter` kept and dropped (one pass over a cut set)."""

    kept: int = 0
    kept_seconds: float = 0.0
    too_short: int = 0
    too_long: int = 0
    fewer_frames_than_tokens: int = 0

    @property
    def dropped(self) -> int:
        return self.too_short + self.too_long + self.fewer_frames_than_tokens

    def summary(self, min_duration: float, max_duration: float) -> str:
        return (f"kept {self.kept} training cuts ({self.kept_seconds / 3600:.2f} h), dropped "
                f"{self.dropped}: {self.too_short} shorter than {min_duration:g} s, "
                f"{self.too_long} longer than {max_duration:g} s, "
                f"{self.fewer_frames_than_tokens} with fewer encoder frames than BPE tokens")


class TrainingCutFilter:
    """icefall's filter of training cuts (remove_short_and_long_utt): keeps a
    cut if min_duration <= duration <= max_duration and the encoder gives at
    least as many frames as its text has tokens (the transducer loss is
    infinite otherwise).

    Args:
      encode: text -> token ids (the BPE model's encode).
      encoder_frames: feature frames -> encoder frames (the subsampling).
      min_duration, max_duration: seconds (icefall's 1 and 20).
    """

    def __init__(self, encode: Callable[[str], list[int]], encoder_frames: Callable[[int], int],
                 min_duration: float = 1.0, max_duration: float = 20.0) -> None:
        self.encode = encode
        self.encoder_frames = encoder_frames
        self.min_duration = min_duration
        self.max_duration = max_duration

    def reason(self, cut: Any) -> str | None:
        """Why `cut` is dropped (a CutFilterCounts field name), None if kept."""
        if cut.duration < self.min_duration:
            return "too_short"
        if cut.duration > self.max_duration:
            return "too_long"
        num_frames = cut.num_frames if cut.num_frames is not None \
            else round(cut.duration * 100)
        num_tokens = sum(len(self.encode(s.text)) for s in cut.supervisions)
        if self.encoder_frames(num_frames) < num_tokens:
            return "fewer_frames_than_tokens"
        return None

    def __call__(self, cut: Any) -> bool:
        return self.reason(cut) is None

    def count(self, cuts: CutSet) -> CutFilterCounts:
        """One pass over `cuts`: how many this filter keeps and drops, and why."""
        counts = CutFilterCounts()
        for cut in cuts:
            reason = self.reason(cut)
            if reason is None:
                counts.kept += 1
                counts.kept_seconds += cut.duration
            else:
                setattr(counts, reason, getattr(counts, reason) + 1)
        return counts
