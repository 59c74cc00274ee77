"""The choices and defaults that commands show in ``--help`` and the library uses, as plain values: importing this
module loads neither torch nor MONAI, so that a command answers ``--help`` without them."""

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed")  # Lightning's names (medseg.precision)
COMPARED_PRECISIONS = ("32-true", "16-mixed")  # what plan and memory put side by side unless told: FP32 against AMP
OUTPUT_FORMATS = ("nifti", "dicom-seg", "both")  # of medseg.infer
POSTPROCESSING_FILE = "postprocessing.json"  # medseg.postprocess's decision, beside the models it was chosen for

# GPU memory planned for when no capacity is given and there is no CUDA GPU to measure: an 8 GiB card
SIMULATED_CAPACITY_GIB = 8.0
BATCH_PLAN_CACHE = "batch_plans.json"  # the batch planner's plan cache, in the run root (trainer.default_root_dir, "runs")
DEFAULT_BUDGET_FRACTION = 0.9  # the rest stays free for what steps do not hold steadily (cuDNN autotuning, fragmentation)
RUNTIMES = ("torch", "onnxruntime", "openvino")  # what runs an exported network's windows (medseg.infer --runtime)
CHECK_TOLERANCE = 0.01  # medseg.export --check: the Dice a class may lose against fp32 PyTorch before a faster way is refused as the default

# the networks python -m medseg.plan chooses between: nnU-Net's PlainConvUNet and its residual-encoder UNet, both as MONAI
# DynUNets (full-resolution first stage, deep supervision), and the UNet of MONAI's spleen tutorial (stride 2 from its first layer)
PLANNED_NETWORKS = ("plain", "resenc", "tutorial")
DEFAULT_PLANNED_NETWORK = "plain"
# what train plans for a dataset without a config where it trains on the CPU: at equal CPU time the tutorial UNet
# takes about 16 times the steps and scored higher on every class of the fine-structures phantoms (issue 35's benchmark)
CPU_PLANNED_NETWORK = "tutorial"
# nnU-Net's residual-encoder presets (documentation/resenc_presets.md): GPU-memory target and nnU-Net's measured peak
# on an A100 40 GB, in GB; medseg plans a preset as a GPU of the target's size with the residual-encoder network
RESENC_PRESETS = {"M": (8, 9.1), "L": (24, 22.7), "XL": (40, 36.6)}
