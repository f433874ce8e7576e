"""The run config's keys in one table: each key's type, default, valid values, whether it is in the
config hash, and its meaning. `check` checks a config against it (one line per fault, naming the
key, the value and what is valid), `value` reads a key with its default, `LEGACY` says what a key
missing from an old run's config.yaml meant, and `reference_markdown` writes docs/config.md
(`python -m roadmap.schema > docs/config.md`). The model's keys are `ArchConfig`'s fields.

Light on purpose (no torch): results, the factory and the data package import it."""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work: one line naming the key, the value and what is valid."""


REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()  # every config sets the key

# Keys added after runs were recorded, with the value a config.yaml without the key meant. A key
# holding that value hashes as absent, so recorded runs keep their hashes; `value` reads it for an
# absent key. A schema key listed here defaults to this value.
LEGACY: dict[str, Any] = {
    "model._target_": "roadmap.model.net.build_net",  # roadmap's builder (roadmap.model.factory.BUILDER)
    "model.init": "trunc_normal",
    "model.head_init_scale": 1.0,
    "recipe.init": "trunc_normal",
    "recipe.schedule.name": "warmup_cosine",
    "recipe.optimizer.normalized_weight_decay": None,
    "recipe.optimizer.layer_decay": None,
    "recipe.augment.eval_warp_from": None,
    "recipe.fine_tune": False,
    "init_from": None,
    "init_from_ema": False,
    "trainer.compile_mode": "default",
    "data.in_memory": "auto",
    "data.cache_dir": None,
    "data.on_bad_image": "skip",
    "data.augment_on": "cpu",
    "data.decode_on": "cpu",
    "data.format": "auto",
    "data.classes": None,
    "data.held_out": None,
    "task.name": "classification",
    "init_from_seed": None,
    "recipe.max_steps": None,
    "recipe.schedule.warmup_steps": None,
}
# Blocks renamed since runs were recorded: old name -> name now (config.yaml files written before
# the rung's deltas were composed by Hydra hold the rung's builder fields as `arch`).
RENAMED: dict[str, str] = {"arch": "model"}

# Experiment folders renamed to their presets' names since their runs were recorded: name now ->
# the `experiment_name` those runs hold. Hashed under the recorded name, so the runs (and new runs
# of the same preset) stay the same runs.
RECORDED_EXPERIMENT_NAMES: dict[str, str] = {
    "imagenette_proxy": "imagenette64_proxy", "imagenette_proxy_v2": "imagenette64_proxy_v2",
    "imagenette_proxy_v3": "imagenette64_proxy_v3", "imagenette_proxy_v4": "imagenette64_proxy_v4",
}


@dataclass(frozen=True)
class Key:
    """One config key. `kind` is what `check` checks: "int", "number", "choice", "list" (of `item`s),
    "batches" (a fraction or a count) or None (any value)."""

    name: str  # its dotted path in the run config
    doc: str  # its meaning (markdown)
    kind: str | None = None
    default: Any = REQUIRED  # the value when the config does not set it
    minimum: float = 0  # "int" and "number" (and a list's items)
    maximum: float | None = None
    choices: tuple[Any, ...] = ()  # "choice"
    nullable: bool = False  # null is valid too
    auto: bool = False  # "auto" is valid too
    says: str = "must be one of {choices}"  # a bad choice's message after `key=value` ({list}: as a list)
    item: str = "number"  # "list": its items' kind
    length: int | None = None  # "list": its length (None: any)
    values: str = ""  # the reference's "Values:" line when the kind does not say it
    hashed: bool = True  # False: changing it does not make another run (results.config_hash)

    def __post_init__(self) -> None:
        if self.default is REQUIRED and self.name in LEGACY:
            object.__setattr__(self, "default", LEGACY[self.name])

    def error(self, value: Any) -> str | None:
        """What is wrong with `value` for this key (one line), or None."""
        if value is None and self.nullable or value == "auto" and self.auto and not isinstance(value, bool):
            return None
        head = f"{self.name}={value!r}"
        if self.kind == "choice":
            ok = any(value is c if isinstance(c, bool) else value == c and not isinstance(value, bool)
                     for c in self.choices)
            if ok:
                return None
            if all(isinstance(c, bool) for c in self.choices):
                return f"{head} must be true, false or null" if self.nullable else f"{head} must be true or false"
            return f"{head} {self.says.format(choices=self.choices, list=list(self.choices))}"
        if self.kind in ("int", "number"):
            if self._fits(value, self.kind):
                return None
            return f"{head} must be " + ("'auto' or " if self.auto else "") + self._range(self.kind) + (
                " or null" if self.nullable else "")
        if self.kind == "list":
            items = value if isinstance(value, Sequence) and not isinstance(value, str) else None
            if items is not None and len(items) == (self.length or len(items)) and all(self._fits(v, self.item) for v in items):
                return None
            count = {2: "two ", 3: "three "}.get(self.length or 0, "")
            return f"{head} must be a list of {count}{self._range(self.item, plural=True)}"
        if self.kind == "batches":  # Lightning's limit_*_batches: a float is a fraction of the batches, an int a count
            if self._fits(value, "int") or self._fits(value, "number") and value <= 1:
                return None
            return f"{head} must be a fraction in [0, 1] or a count (an integer >= 0)" + (" or null" if self.nullable else "")
        return None

    def _fits(self, value: Any, kind: str) -> bool:
        types = int if kind == "int" else (int, float)
        return (not isinstance(value, bool) and isinstance(value, types) and value >= self.minimum
                and (self.maximum is None or value <= self.maximum))

    def _range(self, kind: str, plural: bool = False) -> str:
        what = {("int", False): "an integer", ("number", False): "a number", ("int", True): "integers",
                ("number", True): "numbers"}[kind, plural]
        return f"{what} >= {self.minimum:g}" + ("" if self.maximum is None else f" and <= {self.maximum:g}")


@dataclass(frozen=True)
class Group:
    """A Hydra config group of conf/ (its options are conf/<name>/*.yaml)."""

    name: str
    doc: str
    hashed: bool = True


def _keys(*keys: Key) -> dict[str, Key]:
    return {key.name: key for key in keys}


UNHASHED = "Not in the config hash."

GROUPS = {g.name: g for g in (
    Group("regime", "`r50`: ResNet-50 → ConvNeXt-T; `r200`: ResNet-200 → ConvNeXt-B; `family`: the ConvNeXt "
          "family, T to XL ([ladders.md](ladders.md#the-convnext-family-regimefamily)); `bag_of_tricks`: timm's "
          "ResNet-50 with the Bag of Tricks tweaks ([ladders.md](ladders.md#a-ladder-on-another-model-factory))."),
    Group("experiment", "Presets of data, recipe, trainer and model:\n"
          "- `imagenette_proxy_v2`: the recalibrated CPU proxy (the authors' init, 30 epochs);\n"
          "- `imagenette_proxy`: the first proxy, recorded as the \"before\";\n"
          "- `smoke`: a few optimizer steps at 32 px on a quarter-width model, to check that a rung runs\n"
          "  end to end (point `data.root` at a small copy, e.g. `../shared/data/imagenette2-64-mini`);\n"
          "- `paper_imagenet`: the paper's setting: ImageNet-1K at 224 px, 300 epochs, global batch 4096,\n"
          "  `trainer=ddp`;\n"
          "- `imagenette_proxy_v3` (v2 + weight decay 2.0) and `imagenette_proxy_v4` (v2 +\n"
          "  `normalized_weight_decay` 2.0): rejected proxy candidates.\n\n"
          "See [../experiments/README.md](../experiments/README.md) for what each proxy gives."),
    Group("task", "What the rung is trained for ([downstream.md](downstream.md)): `classification` (the ladder), "
          "`detection` (Mask R-CNN + FPN on COCO), `segmentation` (UperNet on ADE20K)."),
    Group("data", "The data set ([data.md](data.md))."),
    Group("recipe", "The training recipe ([training.md](training.md#the-paper-recipe)); "
          "`conf/recipe/paper.yaml` sets every key of it."),
    Group("trainer", "Devices and precision ([training.md](training.md#devices-ddp-precision-compile))."),
    Group("logger", "CSV is always written; wandb runs offline by itself without an API key or network. "
          + UNHASHED, hashed=False),
)}

KEYS: dict[str, Key] = _keys(
    # The rung and the run.
    Key("step", "The rung: the regime's baseline plus every step delta up to this one.",
        values="a step of the regime (`python -m roadmap.inspect` lists them)"),
    Key("deltas", "An explicit delta list over the baseline instead of the chain to `step`; then `step` is set "
        "to the list's name ([ladders.md](ladders.md#a-delta-list)).", values="`null`, a list of the regime's steps"),
    Key("variant", "A named variant of the rung (a preset's `variants:`); its directory is `<step>-<variant>`.",
        values="`null`, a name"),
    Key("experiment_name", "The folder under `output_root` that holds the runs; set by the experiment preset. "
        "Give a study its own name to keep its runs apart (e.g. `experiment=imagenette_proxy_v2 "
        "experiment_name=proxy_resolution`). Letters, digits and `_ . , + = -` only.", values="a folder name"),
    Key("seed", "The run's seed; its directory is `seed<k>`.", "int"),
    Key("output_root", "Where runs go: the folder that holds every experiment's folder, and in it the run "
        "directories ([runs.md](runs.md#the-run-directory); `$ROADMAP_OUTPUT_DIR`, or `./outputs`). " + UNHASHED, values="a folder", hashed=False),
    Key("output_dir", "The run's directory, made from the keys above ([runs.md](runs.md)). " + UNHASHED,
        values="set by `output_root` and the rung", hashed=False),
    Key("init_from", "Fine-tuning: the run starts from these weights instead of its init: a run directory (its "
        "`last.ckpt`), a `last.ckpt`, or a state-dict file (roadmap, timm or torchvision keys; the official "
        "code's `{\"model\": …}`). A head of another shape is dropped and keeps the rung's own init, scaled "
        "by `recipe.head_init_scale` ([training.md](training.md#fine-tuning)). result.json records the file "
        "and its content hash. `null`: the rung's init.", values="`null`, a folder or a file", nullable=True),
    Key("init_from_ema", "With `init_from`: start from its EMA weights instead of its raw ones.", "choice",
        choices=(False, True)),
    Key("init_from_seed", "With `init_from` naming an experiment: the seed of that experiment's run of this rung "
        "to start from. `null`: this run's own seed.", "int", nullable=True),
    Key("force", "`true` reruns a completed run, in `<run dir>/rerun/` ([runs.md](runs.md#force-reruns)). "
        + UNHASHED, "choice", choices=(False, True), hashed=False),
    # Data.
    Key("data.name", "The data set (`data=<name>` picks its preset).", "choice",
        choices=("imagenet", "imagenet22k", "imagenette", "cifar10", "cifar100", "synthetic", "coco", "ade20k"),
        says="is not a known dataset; use one of {choices} (data=<name>)."),
    Key("data.root", "Where the data set is: an ImageNet layout, the archives, or a shards folder "
        "([data.md](data.md)); `$ROADMAP_DATA_DIR/<the set's folder>` (`./data` when `ROADMAP_DATA_DIR` is unset). "
        + UNHASHED, values="a folder (`null` for synthetic)", hashed=False),
    Key("data.image_size", "The train crop and the eval crop. It must suit the rung's total stride.", "int",
        minimum=1),
    Key("data.num_classes", "The classes of the head; the data are checked against it.", "int", minimum=1),
    Key("data.num_workers", "Loader worker processes per device. `auto`: this process's CPU cores per device, "
        "at most 16. " + UNHASHED, "int", default="auto", auto=True, hashed=False),
    Key("data.in_memory", "imagenet / imagenette: decode each split once to uint8 RGB into a cache file and serve "
        "the decoded pixels. These are the same pixels as decoding the JPEG, so the same run. `auto`: when the "
        "decoded splits take < 2 GiB (estimated from a sample of headers; imagenette2-64 takes 164 MB). "
        + UNHASHED + " Does not apply to shards.", "choice", choices=("auto", True, False),
        says="must be one of auto, true, false.", hashed=False),
    Key("data.cache_dir", "Where `data.in_memory` keeps its cache: files keyed by the split folder's real path and "
        "its files' paths, sizes and mtimes, rebuilt when one changes or a file is truncated. `null`: "
        "`$XDG_CACHE_HOME/roadmap` (`~/.cache/roadmap`), never the data folder; delete the folder to clear old "
        "caches ([data.md](data.md#in-memory)). " + UNHASHED, values="`null`, a folder", hashed=False),
    Key("data.augment_on", "Where the training augmentation runs. `cpu`: per image in the loader workers (timm's "
        "ops on PIL images). `gpu`: per batch on the model's device, after the transfer "
        "([data.md](data.md#augmentation-on-the-gpu)). Both draw from the same distribution, so the same run: "
        "not in the config hash; result.json records it as `augment_on`. Synthetic data are not augmented.",
        "choice", choices=("cpu", "gpu"), hashed=False),
    Key("data.decode_on", "imagenet / imagenette: `gpu` decodes each batch's JPEG bytes on the GPU (nvjpeg) and "
        "crops it there ([data.md](data.md#decoding-on-the-gpu)). Needs CUDA, no `data.in_memory=true`. Not in the "
        "config hash; result.json records it as `decode_on`.", "choice", choices=("cpu", "gpu"),
        says="is not a choice; use one of {choices}.", hashed=False),
    Key("data.on_bad_image", "An unreadable image (corrupt, truncated, zero bytes). `skip` logs it by name "
        "(once), serves the next readable image in its place (or, in memory, leaves it out) and counts it in "
        "result.json's `skipped_images`. `error` stops the run with a message naming the file. " + UNHASHED,
        "choice", choices=("skip", "error"), hashed=False),
    Key("data.format", "imagenet / imagenette: `folder` reads the folder and archive layouts; `shards` reads "
        "litdata shards written by `python -m roadmap.shards` (`data.root` = their folder). `auto`: `shards` when "
        "`data.root` holds `roadmap-shards.json`, else `folder`. " + UNHASHED, "choice",
        choices=("auto", "folder", "shards"), says="is not a format; use one of {choices}.", hashed=False),
    Key("data.classes", "imagenet / imagenet22k / imagenette: read only these classes' folders, labelled 0..K-1 in "
        "sorted WordNet-id order; `data.num_classes` must be K. A named list shipped with the package (`imagenet100`: "
        "the ImageNet-100 of CMC, `data=imagenet100`) or a text file of WordNet ids, one per line (`#` comments and "
        "blank lines allowed). `null`: every class folder ([data.md](data.md#class-subsets)).",
        values="`null`, `imagenet100`, a file"),
    Key("data.held_out", "imagenet22k: a text file of held-out images, paths relative to `data.root`, one per line "
        "(e.g. `n01440764/n01440764_10026.JPEG`); they are the validation set and are left out of training. "
        "`null`: no validation, as the official 22K pre-training; result.json's top-1 is then `null` "
        "([data.md](data.md#imagenet-22k)).", values="`null`, a file"),
    Key("data.download", "cifar10 / cifar100 / imagenette: download the set into `data.root` when it is missing.",
        "choice", choices=(True, False), default=True),
    Key("data.download_size", "imagenette: which of torchvision's Imagenette archives to download.", "choice",
        choices=("full", "320px", "160px"), default="160px"),
    Key("data.train_size", "synthetic: training images.", "int", minimum=1, default=1024),
    Key("data.val_size", "synthetic: validation images.", "int", minimum=1, default=256),
    Key("data.seed", "synthetic: the images' seed (fixed like a real data set, not the run's seed).", "int",
        default=0),
    # Task.
    Key("task.name", "The task (`task=<name>`); a downstream task builds its head on the rung's backbone "
        "(`roadmap.model.backbone`) and takes its weights from `init_from`.", "choice",
        choices=("classification", "detection", "segmentation"), says="is not a task; use one of {choices} (task=<name>)."),
    Key("task.fpn_channels", "detection: the FPN's channels.", "int", minimum=1, default=256),
    Key("task.frozen_bn", "detection / segmentation: freeze the backbone's BatchNorms (statistics and affine), as "
        "torchvision's and mmdetection's ResNet backbones; a LayerNorm rung has none.", "choice",
        choices=(True, False), default=False),
    Key("task.train_sizes", "detection: the short sides multi-scale training draws from, per image (torchvision's "
        "`min_size`); the long side stays ≤ `task.max_size`. Evaluation uses `data.image_size`.", "list",
        item="int", default=[800], values="a list of sizes"),
    Key("task.max_size", "detection: the longest side after resizing.", "int", minimum=1, default=1333),
    Key("task.detector_options", "detection: more arguments of torchvision's `MaskRCNN` (its defaults are the "
        "paper's Mask R-CNN), e.g. `{box_batch_size_per_image: 128, rpn_post_nms_top_n_test: 300}` for a CPU.",
        default={}, values="a mapping of MaskRCNN's arguments"),
    Key("task.eval_train", "detection: each validation also scores the training images (unflipped, as val2017): "
        "result.json's `ap_box_train` and `ap_mask_train`, whether the wiring learns on a few images. " + UNHASHED,
        "choice", choices=(False, True), default=False, hashed=False),
    Key("task.decoder_channels", "segmentation: UperNet's decoder channels.", "int", minimum=1, default=512),
    Key("task.aux_weight", "segmentation: the FCN auxiliary head's loss weight (stage 3); 0: no auxiliary head.",
        "number", default=0.4),
    Key("task.scale", "segmentation: the image is rescaled, ratio kept, to fit (long, short); training draws "
        "a ratio of it from `task.ratio_range`, then crops `data.image_size`.", "list", item="int", length=2,
        default=[2048, 512]),
    Key("task.ratio_range", "segmentation: training's random rescale range.", "list", length=2, default=[0.5, 2.0]),
    Key("task.slide_stride", "segmentation: the sliding window's stride at evaluation (the window is "
        "`data.image_size`).", "int", minimum=1, default=341),
    Key("task.eval_ratios", "segmentation: the ratios of the multi-scale + flip evaluation, run on the final model "
        "(result.json's `miou_ms`); `null`: single scale only.", "list", nullable=True, default=None,
        values="`null`, a list of ratios"),
    # Recipe.
    Key("recipe.name", "The recipe preset's name (`recipe=<name>`).", values="`paper`, `proxy`"),
    Key("recipe.epochs", "The training epochs.", "int", minimum=1),
    Key("recipe.max_steps", "Train this many optimizer steps instead (the schedule spans them; ADE20K's 160k "
        "iterations); `null`: `recipe.epochs`.", "int", minimum=1, nullable=True),
    Key("recipe.global_batch", "The global batch. Accumulation = global / (per-device batch × devices × nodes); "
        "a batch that does not divide is an error.", "int", minimum=1),
    Key("recipe.optimizer.name", "`adamw`: no decay on biases and 1-D parameters (the modern recipe); `sgd`: "
        "momentum and weight decay on every parameter (torchvision's classic recipe).", "choice",
        choices=("adamw", "sgd"), says="is not supported; valid: {list}"),
    Key("recipe.optimizer.base_lr", "The learning rate at `base_batch`; lr = base_lr × global_batch / base_batch "
        "(linear scaling).", "number"),
    Key("recipe.optimizer.base_batch", "The batch `base_lr` is given for.", "int", minimum=1),
    Key("recipe.optimizer.betas", "AdamW's betas.", "list", length=2, maximum=1),
    Key("recipe.optimizer.eps", "AdamW's eps.", "number"),
    Key("recipe.optimizer.weight_decay", "The decoupled weight decay (AdamW: none on biases and 1-D parameters).",
        "number"),
    Key("recipe.optimizer.normalized_weight_decay", "AdamW's decay for the conv and Linear weights whose output "
        "goes straight into a BatchNorm, LayerNorm or GroupNorm (found by one forward pass with hooks at model "
        "setup; listed in a parameter group of their own); the other weights keep `weight_decay`. The norm makes "
        "such a weight's scale irrelevant, so its decay only sets its effective learning rate "
        "(`experiment=imagenette_proxy_v4` uses 2.0). `null`: `weight_decay` for every weight. Not with "
        "`recipe.optimizer.name=sgd`.", "number", nullable=True),
    Key("recipe.optimizer.layer_decay", "Layer-wise lr decay (AdamW): parameter groups by timm's "
        "`param_groups_layer_decay` over the official ConvNeXt grouping (the stem, each stage, the third "
        "stage's blocks in threes, the head: [training.md](training.md#fine-tuning)); a layer's lr is "
        "lr × decay^(L + 1 − layer). `null`: none.", "number", nullable=True, maximum=1),
    Key("recipe.optimizer.momentum", "SGD's momentum (`recipe.optimizer.name=sgd`).", "number", default=0.9),
    Key("recipe.schedule.name", "The per-step learning-rate schedule: `warmup_cosine` (linear warmup, then "
        "cosine), `warmup_poly` (linear warmup, then polynomial decay: mmsegmentation's poly) or `step` (× `gamma` "
        "at each of `milestones`).", "choice", choices=("warmup_cosine", "warmup_poly", "step"),
        says="is not supported; valid: {list}"),
    Key("recipe.schedule.warmup_epochs", "warmup_cosine / warmup_poly: the linear warmup's epochs.", "number"),
    Key("recipe.schedule.warmup_steps", "warmup_cosine / warmup_poly: the linear warmup in optimizer steps instead "
        "of `warmup_epochs` (ADE20K's 1,500); `null`: `warmup_epochs`.", "int", nullable=True),
    Key("recipe.schedule.power", "warmup_poly: the polynomial decay's power (1: linear to `min_lr`).", "number",
        default=1.0),
    Key("recipe.schedule.warmup_start_lr", "warmup_cosine: the learning rate the warmup starts from.", "number"),
    Key("recipe.schedule.min_lr", "warmup_cosine: the learning rate the cosine decays to.", "number"),
    Key("recipe.schedule.milestones", "step: the epochs at which the learning rate is multiplied by `gamma`.",
        "list", item="int", default=[30, 60], values="a list of epochs"),
    Key("recipe.schedule.gamma", "step: the factor at each milestone.", "number", default=0.1),
    Key("recipe.augment.interpolation", "RandomResizedCrop's and the eval resize's interpolation.", "choice",
        choices=("bicubic", "bilinear", "nearest")),
    Key("recipe.augment.scale", "RandomResizedCrop's area range.", "list", length=2),
    Key("recipe.augment.ratio", "RandomResizedCrop's aspect-ratio range.", "list", length=2),
    Key("recipe.augment.hflip", "The horizontal flip's probability.", "number", maximum=1),
    Key("recipe.augment.randaugment", "RandAugment in timm notation; `null` turns it off.",
        values="`null`, e.g. `rand-m9-mstd0.5-inc1`"),
    Key("recipe.augment.color_jitter", "Color jitter's strength; inactive whenever `randaugment` is set, as in "
        "the official code.", "number", nullable=True),
    Key("recipe.augment.random_erasing", "RandomErasing's probability.", "number", maximum=1),
    Key("recipe.augment.random_erasing_mode", "RandomErasing's fill (`pixel`: per-pixel random values).", "choice",
        choices=("pixel", "rand", "const")),
    Key("recipe.augment.random_erasing_count", "RandomErasing's boxes per image.", "int"),
    Key("recipe.augment.mixup", "MixUp's alpha; 0 disables it.", "number"),
    Key("recipe.augment.cutmix", "CutMix's alpha; 0 disables it.", "number"),
    Key("recipe.augment.mixup_prob", "The probability of mixing a batch at all.", "number", maximum=1),
    Key("recipe.augment.mixup_switch_prob", "The probability of CutMix instead of MixUp, per batch.", "number",
        maximum=1),
    Key("recipe.augment.mixup_mode", "timm's Mixup mode.", "choice", choices=("batch", "pair", "elem")),
    Key("recipe.augment.crop_pct", "Eval: resize the short side to `image_size / crop_pct`, center crop "
        "`image_size`.", "number"),
    Key("recipe.augment.eval_warp_from", "Eval at this size and above: resize (warp) the whole image to "
        "`image_size` × `image_size`, no crop (the official ConvNeXt evaluation at 384 px; the `family_*` "
        "recipes set 384). `null`: `crop_pct` at every size.", "number", nullable=True),
    Key("recipe.augment.mean", "The normalization's per-channel mean.", "list", length=3),
    Key("recipe.augment.std", "The normalization's per-channel std.", "list", length=3),
    Key("recipe.label_smoothing", "Label smoothing (through the mixed soft targets when mixing is on).", "number",
        maximum=1),
    Key("recipe.drop_path", "The maximum stochastic-depth rate (→ `model.drop_path`).", "number", maximum=1),
    Key("recipe.layer_scale", "The layer scale's init, 0: off (→ `model.layer_scale`).", "number"),
    Key("recipe.head_init_scale", "The head's initial weight and bias × this, 0.001 when fine-tuning "
        "(→ `model.head_init_scale`).", "number"),
    Key("recipe.init", "The weight init (→ `model.init`). `torch_default` leaves every conv at PyTorch's default "
        "(kaiming-uniform a=√5, std 1/√(3·fan_in), uniform bias) and gives the Linear head N(0, 0.02), as the "
        "authors' code trained the ladder's rungs (`recipe=paper`); `trunc_normal` is the released ConvNeXt's "
        "N(0, 0.02), zero bias, on every conv and Linear (`recipe=proxy`).", "choice",
        choices=("trunc_normal", "torch_default")),
    Key("recipe.fine_tune", "A fine-tuning recipe (the `family_*_ft*` recipes): a run must start from `init_from`.",
        "choice", choices=(True, False), hashed=False),
    Key("recipe.grad_clip", "The gradient norm's clip; `null`: none.", "number", nullable=True),
    Key("recipe.ema_decay", "The EMA's decay; the EMA is tracked and evaluated separately (`null` or 0: none).",
        "number", maximum=1, nullable=True),
    Key("recipe.ema_warmup", "`true`: the decay is min(decay, (1+n)/(10+n)), so a short run's EMA tracks the "
        "model early.", "choice", choices=(False, True), nullable=True),
    # Trainer.
    Key("trainer.name", "The trainer preset's name (`trainer=<name>`)."),
    Key("trainer.accelerator", "Lightning's accelerator; `auto`: `gpu` when CUDA is available, else `cpu`.",
        "choice", choices=("auto", "cpu", "gpu", "cuda", "mps")),
    Key("trainer.devices", "Devices per node; one SLURM task per device. `auto`: every visible GPU, or 1.", "int",
        minimum=1, auto=True),
    Key("trainer.num_nodes", "Nodes.", "int", minimum=1),
    Key("trainer.strategy", "Lightning's strategy (`ddp` under `trainer=ddp`).", values="`auto`, `ddp`, …"),
    Key("trainer.precision", "Lightning's precision; `auto`: `bf16-mixed` on a GPU that has it, else `32-true`.",
        "choice", choices=("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "32", "16",
                           "bf16", "64", 32, 16, 64), values="`auto`, `32-true`, `bf16-mixed`, `16-mixed`, …"),
    Key("trainer.per_device_batch", "`auto`: the largest batch dividing `recipe.global_batch`, up to "
        "`trainer=gpu`'s 128 on a GPU and `trainer=cpu`'s 64 on a CPU. A preset or the command line may set it. "
        "Not in the config hash (see [runs.md](runs.md#the-config-hash)).", "int", minimum=1, auto=True,
        hashed=False),
    Key("trainer.sync_batchnorm", "BatchNorm statistics synchronized across devices.", "choice",
        choices=(False, True)),
    Key("trainer.channels_last", "The channels-last memory layout (1.0–1.8× faster on CPU too). Not in the config "
        "hash: it changes results only by float rounding.", "choice", choices=(True, False), hashed=False),
    Key("trainer.compile", "torch.compile the model. " + UNHASHED, "choice", choices=(False, True), hashed=False),
    Key("trainer.compile_mode", "torch.compile's mode under `trainer.compile=true`. `reduce-overhead` = CUDA "
        "graphs, for small models whose step is launch-bound. " + UNHASHED, "choice",
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
        says="is not a torch.compile mode; valid: {list}", hashed=False),
    Key("trainer.diagnostics", "The `dyn/` columns of metrics.csv ([runs.md](runs.md#training-dynamics)). `false` "
        "turns them off and leaves the weights bitwise the same. " + UNHASHED, "choice", choices=(True, False),
        hashed=False),
    Key("trainer.deterministic", "With one CPU/GPU device and `data.num_workers=0`, a resumed run ends with the "
        "same weights, bit for bit, as an uninterrupted one.", "choice", choices=(False, True)),
    Key("trainer.limit_train_batches", "Training batches per epoch, a fraction or a count (smoke runs); `null`: "
        "all.", "batches", nullable=True),
    Key("trainer.limit_val_batches", "Validation batches, a fraction or a count; `null`: all.", "batches",
        nullable=True),
    Key("trainer.check_val_every_n_epoch", "Validate every n epochs and at the end.", "int", minimum=1),
    Key("trainer.validate_first_epoch", "Also validate after epoch 0 when `check_val_every_n_epoch` > 1, so that a "
        "run shows an accuracy early. It trains exactly as without it (the RNG states are put back after that "
        "validation). `false` in runs recorded before it. " + UNHASHED, "choice", choices=(True, False),
        default=False, hashed=False),
    Key("trainer.log_every_n_steps", "The loss is checked for NaN/inf at each log step and at epoch end; plain "
        "progress lines are printed this often when stdout is not a terminal.", "int", minimum=1),
    # Logging.
    Key("logger.wandb", "Also log to Weights & Biases (`logger=wandb`).", "choice", choices=(False, True),
        hashed=False),
    Key("logger.project", "The wandb project.", default="roadmap", hashed=False),
    Key("logger.entity", "The wandb entity; `null`: the API key's default.", default=None, hashed=False),
)

# Blocks whose keys are not in this table: the rung's model (ArchConfig's fields, or another
# factory's arguments) and the regime's definition (its baseline, steps and branches).
BLOCKS = ("model", "regime")

ENVIRONMENT = {
    "ROADMAP_DATA_DIR": "The folder holding the data sets (`imagenette2-64/`, `imagenet/`, `cifar10/`, …); the "
                        "default `data.root`.",
    "ROADMAP_OUTPUT_DIR": "The default `output_root`.",
    "WANDB_MODE": "Wins over the automatic online/offline choice.",
    "HYDRA_FULL_ERROR": "`HYDRA_FULL_ERROR=1` also prints the traceback of a one-line error.",
}


def unhashed_keys() -> list[str]:
    """The keys (and whole groups) `results.config_hash` leaves out."""
    groups = [g.name for g in GROUPS.values() if not g.hashed]
    return groups + [k.name for k in KEYS.values() if not k.hashed and k.name.split(".")[0] not in groups]


def _lookup(node: Any, path: str) -> Any:
    """The value at the dotted `path` under `node` (`node` itself for ""), or REQUIRED when absent."""
    for part in path.split(".") if path else []:
        if not isinstance(node, Mapping) or part not in node:
            return REQUIRED
        node = node[part]
    return node


def value(node: Mapping[str, Any], key: str) -> Any:
    """`key`'s value in `node`, the block of the config that holds it (e.g. `cfg.data` for `data.in_memory`),
    or what its absence means: its default (for an old run's config: its LEGACY value)."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf in node:
        return node[leaf]
    default = KEYS[key].default if key in KEYS else LEGACY[key]
    if default is REQUIRED:
        raise KeyError(key)
    return default


def check_value(key: str, value: Any) -> None:
    """ConfigError when `value` is not valid for `key`."""
    error = KEYS[key].error(value)
    if error:
        raise ConfigError(error)


def unknown_key(key: str) -> str:
    """The one line for a key that nothing reads (a typo, or a `+key` added on the command line)."""
    nearest = difflib.get_close_matches(key, KEYS, n=1, cutoff=0.5)
    hint = f"the nearest valid key is {nearest[0]}" if nearest else "docs/config.md lists the valid keys"
    return f"{key} is not a config key (nothing reads it); {hint}"


def _unknown_keys(node: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of `node` that are neither in the schema nor in one of BLOCKS."""
    found = []
    for name, child in node.items():
        path = f"{prefix}{name}"
        if path in KEYS or path.split(".")[0] in BLOCKS:
            continue
        if isinstance(child, Mapping) and any(key.startswith(f"{path}.") for key in KEYS):
            found += _unknown_keys(child, f"{path}.")
        else:
            found.append(path)
    return found


def check(node: Mapping[str, Any], at: str = "") -> None:
    """Check every key of the schema under `at`, the dotted path of `node` in the run config ("" for the
    whole config, "data" for its data block, …): its value, or its absence when it has no default; then
    the rules between keys. The whole config must hold no other keys (outside BLOCKS). The first fault
    is a ConfigError of one line."""
    prefix = f"{at}." if at else ""
    unknown = [] if at else _unknown_keys(node)
    if unknown:
        raise ConfigError(unknown_key(unknown[0]))
    for key in KEYS.values():
        if not key.name.startswith(prefix):
            continue
        found = _lookup(node, key.name[len(prefix):])
        if found is REQUIRED:
            if key.default is REQUIRED:
                if key.kind is None:
                    raise ConfigError(f"{key.name} is missing; every run config sets it")
                found = None
            else:
                continue
        check_value(key.name, found)
    if "recipe.optimizer.".startswith(prefix):
        optimizer = _lookup(node, "recipe.optimizer"[len(prefix):])
        if isinstance(optimizer, Mapping):
            _check_optimizer(optimizer)


def _check_optimizer(opt: Mapping[str, Any]) -> None:
    decay = opt.get("normalized_weight_decay")
    if opt.get("layer_decay") is not None and (opt.get("name") == "sgd" or decay is not None):
        raise ConfigError(f"recipe.optimizer.layer_decay={opt.get('layer_decay')!r} is an AdamW option without "
                          "normalized_weight_decay: set one of them to null")
    if opt.get("name") == "sgd" and decay is not None:
        raise ConfigError(f"recipe.optimizer.normalized_weight_decay={decay!r} is an AdamW option; "
                          "recipe.optimizer.name=sgd decays every parameter alike: set it to null")


# --- the reference (docs/config.md) -------------------------------------------------------------

SECTIONS = {"": "The rung and the run", "model": "Model", "task": "Task", "data": "Data", "recipe": "Recipe", "trainer": "Trainer",
            "logger": "Logging"}
HEADER = """<!-- Generated by `python -m roadmap.schema > docs/config.md` from roadmap/schema.py and
roadmap/model/config.py; tests/test_config_reference.py keeps them equal. Edit those, not this file. -->
# Configuration keys (`conf/`)

Every key can be set on the command line of `python -m roadmap.run` (`key=value`), and the same
keys are passed on by `roadmap.sweep`, `roadmap.status` and `roadmap.inspect`. Each entry gives the
key, its values, what a config that does not set it means ("Unset"; for a key added later, what
runs recorded before it had), its value in the default run config (`python -m roadmap.run` without
overrides: `conf/train.yaml` and its default presets) and its meaning. "Not in the config hash" means that
changing the key does not make a new run ([runs.md](runs.md#the-config-hash)). A config group
(`data=<option>`, …) sets every key of its block at once.
"""


def _literal(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


def _values(key: Key) -> str:
    if key.values:
        return key.values
    if key.kind == "choice":
        return ", ".join(f"`{_literal(c)}`" for c in (*key.choices, *([None] if key.nullable else [])))
    upper = "" if key.maximum is None else f" and ≤ {key.maximum:g}"
    count = {2: "two ", 3: "three "}.get(key.length or 0, "")
    text = {"int": f"an integer ≥ {key.minimum:g}{upper}", "number": f"a number ≥ {key.minimum:g}{upper}",
            "list": f"a list of {count}{'integers' if key.item == 'int' else 'numbers'} ≥ {key.minimum:g}{upper}",
            "batches": "a fraction in [0, 1] or a count (an integer ≥ 0)"}.get(key.kind, "any")
    return ("`auto`, " if key.auto else "") + text + (", `null`" if key.nullable else "")


def _group_options(name: str) -> list[str]:
    from roadmap.ladder import conf_dir

    return sorted(p.stem for p in (conf_dir() / name).glob("*.yaml"))


def reference_markdown() -> str:
    """docs/config.md: every key of the schema and every ArchConfig field, by section."""
    from omegaconf import OmegaConf

    from roadmap.ladder import compose_run, conf_dir
    from roadmap.model.config import ArchConfig

    default = OmegaConf.to_container(compose_run([]), resolve=False)
    train = OmegaConf.to_container(OmegaConf.load(conf_dir() / "train.yaml"))
    chosen = {k: v for entry in train["defaults"] if isinstance(entry, dict) for k, v in entry.items()}
    lines = [HEADER]
    for section, title in SECTIONS.items():
        lines.append(f"## {title}\n")
        group = GROUPS.get(section)
        if group is not None:
            options = ", ".join(f"`{o}`" for o in _group_options(section))
            lines += [f"### `{section}`", f"Values: {options}. Default `{chosen[section]}`.", group.doc, ""]
        if section == "":
            for name in ("regime", "experiment"):
                options = ", ".join(f"`{o}`" for o in _group_options(name))
                lines += [f"### `{name}`", f"Values: {options}. Default `{chosen[name]}`.", GROUPS[name].doc, ""]
        if section == "model":
            lines += _model_reference(ArchConfig, default["model"])
            continue
        for key in KEYS.values():
            if key.name.split(".")[0] != section and not (section == "" and "." not in key.name):
                continue
            lines += [f"### `{key.name}`", _values_line(key, default), key.doc, ""]
    lines += ["## Environment variables\n"]
    for name, doc in ENVIRONMENT.items():
        lines += [f"### `{name}`", doc, ""]
    return "\n".join(lines).rstrip() + "\n"


def _values_line(key: Key, default: Mapping[str, Any]) -> str:
    line = f"Values: {_values(key)}."
    if key.default is not REQUIRED:
        line += f" Unset: `{_literal(key.default)}`."
    found = _lookup(default, key.name)
    if found is not REQUIRED:
        line += f" Default run: `{_literal(found)}`."
    return line


def _model_reference(arch: type, default: Mapping[str, Any]) -> list[str]:
    from roadmap.model.config import CHOICES

    lines = ["### `model.<field>`",
             "The rung's model: the regime's factory (`model._target_`) and its arguments, the regime's baseline "
             "changed by the rung's deltas; the command line wins (e.g. `model.kernel_size=5`). Roadmap's builder "
             "(`_target_` " + f"`{LEGACY['model._target_']}`" + ") takes the `ArchConfig` fields below; another "
             "factory (e.g. `regime=bag_of_tricks`, timm) takes its own arguments.", ""]
    for field in dataclasses.fields(arch):
        values = ", ".join(f"`{c}`" for c in CHOICES[field.name]) if field.name in CHOICES else f"`{field.type}`"
        given = default.get(field.name, REQUIRED)
        shown = f" Default run: `{_literal(given)}`." if given is not REQUIRED else ""
        lines += [f"### `model.{field.name}`", f"Values: {values}.{shown}", field.metadata.get("doc", ""), ""]
    return lines


if __name__ == "__main__":
    print(reference_markdown(), end="")
