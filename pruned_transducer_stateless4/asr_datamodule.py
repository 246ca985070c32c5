"""Data loading on lhotse, with the options of icefall's LibriSpeechAsrDataModule.

Cut sets come from `prepare.sh` stage 3 (data/fbank/librispeech_cuts_{part}.jsonl.gz,
features precomputed); noise for --enable-musan from data/fbank/musan_cuts.jsonl.gz.
A batch from the dataloaders is lhotse's K2SpeechRecognitionDataset dict:
  batch["inputs"]        (N, T, 80) float features, padded with LOG_EPS-like values
  batch["supervisions"]  {"text": [str], "num_frames": (N,), "cut": [Cut], ...}
"""

import argparse
import logging
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

from shared.utils import str2bool


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
        group.add_argument("--max-duration", type=float, default=30.0,
                           help="Seconds of audio per batch (summed over its cuts). Small "
                           "batches give more updates per minute, which a CPU run needs.")
        group.add_argument("--bucketing-sampler", type=str2bool, default=True,
                           help="Group cuts of similar duration (DynamicBucketingSampler).")
        group.add_argument("--num-buckets", type=int, default=30,
                           help="Number of duration buckets of the bucketing sampler.")
        group.add_argument("--shuffle", type=str2bool, default=True,
                           help="Shuffle the training cuts every epoch.")
        group.add_argument("--drop-last", type=str2bool, default=True,
                           help="Drop the last incomplete training batch.")
        group.add_argument("--num-workers", type=int, default=0,
                           help="DataLoader worker processes. 0 loads in the training process; "
                           "on 2 cores a worker competes with the training threads.")
        group.add_argument("--enable-spec-aug", type=str2bool, default=True,
                           help="Apply SpecAugment to training features.")
        group.add_argument("--spec-aug-time-warp-factor", type=int, default=20,
                           help="SpecAugment time warp factor; < 1 disables time warping "
                           "(icefall uses 80 for ~15 s LibriSpeech utterances; ours are ~3 s).")
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
        input_transforms = []
        if args.enable_spec_aug:
            # Mask sizes scaled down from icefall's 100-frame masks: our
            # utterances are ~3 s, LibriSpeech's ~12 s.
            input_transforms.append(
                SpecAugment(
                    time_warp_factor=args.spec_aug_time_warp_factor,
                    num_frame_masks=2,
                    frames_mask_size=40,
                    features_mask_size=27,
                    num_feature_masks=2,
                    max_frames_mask_fraction=0.15,
                )
            )
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
            sampler.load_state_dict(sampler_state_dict)
        return DataLoader(dataset, sampler=sampler, batch_size=None,
                          num_workers=args.num_workers, persistent_workers=False)

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
        """All 960 h (icefall's --full-libri); here the concatenation of the parts."""
        from lhotse import combine

        return combine(self._cuts(part) for part in
                       ("train-clean-100", "train-clean-360", "train-other-500"))

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
