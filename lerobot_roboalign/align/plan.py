"""``roboalign align plan``: GPU memory per GPU of SFT, GRPO and the VLA, before renting the GPUs.

The model is built from its config on the meta device (accelerate's ``init_empty_weights``: no weights are
read or allocated), so the parameter counts are exact: total, frozen vision tower, the largest module (what
ZeRO-3 gathers) and the root of FSDP's wrapping (embeddings, LM head). Each launch comes from an accelerate
config file (DDP, DeepSpeed ZeRO-2/3, FSDP) and each stage's memory is the sum of:

- model states, bytes per parameter over ``N`` GPUs (P all, T trained), with bf16 compute and float32 master
  weights as in ``precision.py``: DDP 4P + 12T (fp32 weights, grads, AdamW m and v); ZeRO-2 2P + 18T/N
  and ZeRO-3 (2P + 16T)/N + 4 x largest module (DeepSpeed's own formulas: 16-bit weights and grads, fp32
  grads, master weights and m, v; its estimators are called when deepspeed is installed); FSDP2
  (4P + 12T)/N + 4 x (root + 2 largest wrapped layers) (fp32 shards; bf16 copies and grads of the gathered units);
- activations, a stated estimate: with gradient checkpointing, tokens x hidden x layers x 2 bytes of layer
  inputs plus one layer recomputed, tokens x (6 hidden + 4 intermediate) x 2 bytes; without it, that layer
  term for every layer; plus the logits, tokens x vocab x 10 bytes (bf16 logits, their float32 upcast in the loss
  and its float32 gradient); ``--attn_implementation=eager`` adds the attention matrix, batch x heads x tokens^2
  x 8 bytes for the layer computed (bf16 scores and probabilities, float32 softmax) and, without checkpointing,
  2 bytes of probabilities per other layer (sdpa and flash_attention_2 keep no tokens^2 term);
- GRPO: the KL reference in bf16 (2P, or 2P/N where ZeRO-3/FSDP shard it) and vLLM colocated: its share of the
  GPU while it generates; with sleep mode it frees that share while the policy trains, so the peak is the larger
  of the generation and update phases;
- the VLA (lerobot-train, DDP): the frozen backbone in bf16 up to ``vla_layer`` (no LM head), the float32 head
  with AdamW, the backbone run without gradients (one layer at a time);
- LoRA / QLoRA (``--method=lora|qlora``, one GPU or DDP; ``align/lora.py``): the base frozen in bf16 (2 bytes per
  parameter), or its linear layers but the LM head in 4 bits (NF4 with double quantisation, 0.516 bytes) and the
  rest in float32 (``prepare_model_for_kbit_training``) plus one linear layer dequantized to bf16 at a time; the
  trained parameters (adapters at rank ``lora_r`` and the action tokens' rows) as float32 masters with their
  gradients and AdamW states (16 bytes); GRPO's KL reference is the base with the adapter disabled (no copy);
  host RAM: the float32 reload that merges the adapter at the end;
- a fixed 3 GB for the CUDA context, NCCL buffers and allocator fragmentation.

vLLM's KV cache is reported for GRPO: a rollout's completions on one GPU (``grpo_generation_batch`` / GPUs) x
(prompt + completion) tokens x layers x 2 (K, V) x KV heads x head dim x 2 bytes, against what vLLM's share leaves
after its bf16 weights. Where it does not hold them all, vLLM generates in waves (slower, not out of memory): the
plan warns and names the share that would hold them.

A launch fits when its peak stays under (1 - headroom) of the GPU memory (default 10%: the estimate's margin).
Host RAM at load is reported too: every rank loads a float32 copy under DDP and ZeRO-2; ZeRO-3 init and FSDP's
cpu-ram-efficient loading (the trainer config exists before the model, see ``common.py``) load one; under FSDP each
rank also reads GRPO's KL reference whole in bf16 (``launch.with_whole_reference``).

    roboalign align plan --model=Qwen/Qwen2.5-VL-7B-Instruct --gpu_memory_gb=80 --output_dir=plan
"""

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml

from lerobot_roboalign.align import commands
from lerobot_roboalign.align.config import PlanConfig

logger = logging.getLogger(__name__)

GB = 1e9
OVERHEAD_GB = 3.0
VLLM_ASLEEP_GB = 1.0  # what a sleeping vLLM keeps on the GPU (context, CUDA graphs)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "accelerate"
# Least communication first: the recommended launch of a stage is the first of these that fits.
PREFERENCE = ("ddp", "zero2", "zero3", "fsdp")
LOGIT_BYTES = 10  # bf16 logits, their float32 upcast in the loss and the float32 gradient of that upcast
NF4_BYTES = 0.5 + 0.127 / 8  # 4-bit weights plus double-quantized block scales (QLoRA paper: 0.127 bits per parameter)


@dataclass
class ModelSizes:
    """Parameter counts of the MLLM (with the action tokens) and the shapes the activations depend on."""

    total: int
    vision: int
    largest_module: int  # the most parameters one module holds itself (what ZeRO-3 gathers at once)
    largest_layer: int  # the largest decoder layer / vision block (FSDP's wrapped units)
    fsdp_root: int  # parameters outside the wrapped layers (embeddings, LM head, norms): FSDP's root unit
    vla_backbone: int  # what the VLA keeps: vision + embeddings + layers up to vla_layer
    vla_head: int
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    action_rows: int = 0  # the action tokens' rows of the embeddings and an untied LM head (trained under LoRA)
    lora: int = 0  # adapter parameters at --lora_r on --lora_target_modules
    quantized: int = 0  # parameters in 4 bits under QLoRA: every linear layer but the LM head


@dataclass
class Launch:
    name: str
    kind: str  # ddp | zero2 | zero3 | fsdp
    num_processes: int


def build_on_meta(model: str):
    """The model of ``model``'s config with no storage (weights never loaded); its text config."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForImageTextToText

    try:
        config = AutoConfig.from_pretrained(model)
    except OSError as error:
        raise ValueError(
            f"Cannot read the config of {model!r} ({error}). Fix: pass a local model directory (only its "
            "config.json is needed) or a hub id with the hub reachable (HF_HUB_OFFLINE unset)."
        ) from error
    with init_empty_weights():
        built = AutoModelForImageTextToText.from_config(config)
    built.tie_weights()  # from_config leaves a tied LM head (Qwen2.5-VL-3B) a separate tensor on the meta device
    return built, getattr(config, "text_config", config)


def model_sizes(model: str, cfg: PlanConfig) -> ModelSizes:
    built, text = build_on_meta(model)
    return measure(built, text, cfg)


def measure(built: torch.nn.Module, text, cfg: PlanConfig) -> ModelSizes:
    """Counts of ``built`` (meta or real) with ``cfg.action_tokens`` more rows in its embeddings and LM head."""
    from lerobot_roboalign.align.common import VISION_MODULE_NAMES
    from lerobot_roboalign.align.lora import adapter_parameters

    params = dict(built.named_parameters())  # tied weights once
    hidden = text.hidden_size
    tied = built.get_output_embeddings() is None or built.get_output_embeddings().weight is built.get_input_embeddings().weight
    added = cfg.action_tokens * hidden * (1 if tied else 2)
    vision = sum(p.numel() for n, p in params.items() if any(part in VISION_MODULE_NAMES for part in n.split(".")))
    units = [m for m in built.modules() if type(m).__name__ in set(built._no_split_modules or [])]
    in_units = {id(p) for m in units for p in m.parameters()}
    largest_module = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in built.modules())
    layers = text.num_hidden_layers
    lm_head = 0 if tied else built.get_output_embeddings().weight.numel() + cfg.action_tokens * hidden
    per_layer = sum(p.numel() for n, p in params.items() if ".layers.0." in n and "visual" not in n)
    total = sum(p.numel() for p in params.values()) + added
    return ModelSizes(
        total=total,
        vision=vision,
        largest_module=largest_module + cfg.action_tokens * hidden,
        largest_layer=max(sum(p.numel() for p in m.parameters()) for m in units),
        fsdp_root=sum(p.numel() for p in params.values() if id(p) not in in_units) + added,
        vla_backbone=total - lm_head - per_layer * max(layers - cfg.vla_layer, 0),
        vla_head=vla_head_parameters(hidden, cfg),
        hidden=hidden,
        layers=layers,
        intermediate=text.intermediate_size,
        heads=text.num_attention_heads,
        kv_heads=text.num_key_value_heads,
        head_dim=getattr(text, "head_dim", None) or hidden // text.num_attention_heads,
        vocab=text.vocab_size + cfg.action_tokens,
        action_rows=added,
        **dict(zip(("lora", "quantized"), adapter_parameters(built, cfg.lora_r, cfg.lora_target_modules), strict=True)),
    )


def vla_head_parameters(feature_dim: int, cfg: PlanConfig) -> int:
    """The VLA's flow-matching head, built on the meta device (7-D actions, 8-D state, chunks of 16)."""
    from accelerate import init_empty_weights

    from lerobot_roboalign.action_head import ActionHeadSpec, FlowMatchingActionHead

    spec = ActionHeadSpec(feature_dim=feature_dim, state_dim=8, action_dim=7, chunk_size=16,
                          hidden_size=cfg.vla_head_hidden, num_layers=cfg.vla_head_layers)
    with init_empty_weights():
        head = FlowMatchingActionHead(spec)
    return sum(p.numel() for p in head.parameters())


def read_launch(path: Path, num_processes: int | None) -> Launch:
    """The strategy and process count of an accelerate config file."""
    config = yaml.safe_load(Path(path).read_text())
    kind = {"DEEPSPEED": None, "FSDP": "fsdp", "MULTI_GPU": "ddp", "NO": "ddp"}.get(config.get("distributed_type"))
    if config.get("distributed_type") == "DEEPSPEED":
        kind = f"zero{config.get('deepspeed_config', {}).get('zero_stage', 0)}"
    if kind not in PREFERENCE:
        raise ValueError(f"{path}: distributed_type {config.get('distributed_type')!r} (zero stage) is not planned; "
                         f"use DDP (MULTI_GPU), DeepSpeed ZeRO-2/3 or FSDP.")
    return Launch(name=Path(path).stem, kind=kind, num_processes=num_processes or int(config.get("num_processes", 1)))


def model_states(kind: str, params: int, trained: int, n: int, sizes: ModelSizes) -> dict[str, float]:
    """Weights, gradients, optimizer states and gathered units in bytes per GPU."""
    if kind == "ddp":
        return dict(weights=4 * params, gradients=4 * trained, optimizer=8 * trained, gathered=0)
    if kind == "zero2":
        return dict(weights=2 * params, gradients=6 * trained / n, optimizer=12 * trained / n, gathered=0)
    if kind == "zero3":
        return dict(weights=2 * params / n, gradients=4 * trained / n, optimizer=12 * trained / n,
                    gathered=4 * sizes.largest_module)
    return dict(weights=4 * params / n, gradients=4 * trained / n, optimizer=8 * trained / n,
                gathered=4 * (sizes.fsdp_root + 2 * sizes.largest_layer))


def adapter_states(method: str, trained: int, sizes: ModelSizes) -> dict[str, float]:
    """LoRA / QLoRA bytes per GPU (each GPU a whole replica): the frozen base and the float32 trained parameters."""
    if method == "lora":
        frozen, gathered = 2 * sizes.total, 0
    else:  # one linear layer's weight dequantized to bf16 for its matmul (the largest: an MLP projection)
        frozen = NF4_BYTES * sizes.quantized + 4 * (sizes.total - sizes.quantized)
        gathered = 2 * sizes.hidden * sizes.intermediate
    return dict(weights=frozen + 4 * trained, gradients=4 * trained, optimizer=8 * trained, gathered=gathered)


def activations(sizes: ModelSizes, batch: int, tokens: int, logit_tokens: int, checkpointing: bool,
                attn: str = "sdpa") -> float:
    """Bytes of one micro-batch's activations (the stated estimate in the module docstring)."""
    one_layer = batch * tokens * (6 * sizes.hidden + 4 * sizes.intermediate) * 2
    kept = batch * tokens * sizes.hidden * sizes.layers * 2 + one_layer if checkpointing else one_layer * sizes.layers
    if attn == "eager":
        scores = batch * sizes.heads * tokens**2
        kept += 8 * scores + (0 if checkpointing else 2 * scores * (sizes.layers - 1))
    return kept + batch * logit_tokens * sizes.vocab * LOGIT_BYTES


def deepspeed_estimate(kind: str, params: int, largest: int, n: int) -> float | None:
    """DeepSpeed's own model-states estimate (every parameter trained, no offload), if deepspeed is installed."""
    if kind not in ("zero2", "zero3"):
        return None
    try:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    except ImportError:
        return None
    if kind == "zero2":
        return estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=n, cpu_offload=False)[1]
    return estimate_zero3_model_states_mem_needs(params, largest, num_gpus_per_node=n, cpu_offload=False,
                                                 cpu_offload_params=False)[1]


def plan_stage(stage: str, launch: Launch, sizes: ModelSizes, cfg: PlanConfig) -> dict | None:
    """One row of the plan: the memory parts in GB per GPU, their peak, and whether it fits."""
    n, kind = launch.num_processes, launch.kind
    adapter = cfg.method != "full" and stage != "vla"
    if adapter and kind != "ddp":
        return None  # LoRA runs on one GPU or as DDP replicas
    vllm = reference = 0.0
    if stage == "vla":
        if kind != "ddp":
            return None  # lerobot-train runs the VLA with DDP (accelerate --multi_gpu)
        head = sizes.vla_head
        parts = dict(weights=2 * sizes.vla_backbone + 4 * head, gradients=4 * head, optimizer=8 * head, gathered=0)
        tokens = cfg.vla_batch * cfg.vla_prompt_len
        act = tokens * (6 * sizes.hidden + 4 * sizes.intermediate) * 2 + tokens * sizes.hidden * 4
        act += cfg.vla_batch * 17 * cfg.vla_head_hidden * cfg.vla_head_layers * 40  # the head's own, small
        trained = head
    else:
        if adapter:
            trained = sizes.lora + sizes.action_rows
            parts = adapter_states(cfg.method, trained, sizes)
        else:
            trained = sizes.total - (sizes.vision if stage == "sft" and cfg.freeze_vision else 0)
            parts = model_states(kind, sizes.total, trained, n, sizes)
        if stage == "sft":
            act = activations(sizes, cfg.sft_micro_batch, cfg.sft_seq_len, cfg.sft_seq_len, cfg.gradient_checkpointing,
                              cfg.attn_implementation)
        else:
            tokens = cfg.grpo_prompt_len + cfg.grpo_completion_len
            act = activations(sizes, cfg.grpo_micro_batch, tokens, cfg.grpo_completion_len, cfg.gradient_checkpointing,
                              cfg.attn_implementation)
            # Under LoRA the reference is the base with the adapter disabled (TRL): no copy.
            reference = 0.0 if adapter else 2 * sizes.total / (n if kind in ("zero3", "fsdp") else 1)
            vllm = cfg.vllm_gpu_memory_utilization * cfg.gpu_memory_gb * GB if cfg.vllm else 0.0
    states = sum(parts.values()) + reference + OVERHEAD_GB * GB
    update = states + act + (min(vllm, VLLM_ASLEEP_GB * GB) if cfg.vllm_sleep else vllm)
    generation = states + vllm
    peak = max(update, generation)
    weights = 2 * sizes.vla_backbone if stage == "vla" else 4 * sizes.total  # as loaded: bf16 frozen / fp32 trained
    host = weights * (1 if kind in ("zero3", "fsdp") else n)
    if stage == "grpo" and kind == "fsdp":  # every rank reads the KL reference whole in bf16 (launch.py)
        host += 2 * sizes.total * n
    if adapter:  # every rank loads the base in bf16; the main process reloads it in float32 to merge the adapter
        host = max(2 * sizes.total * n, 4 * sizes.total)
    ds = deepspeed_estimate(kind, sizes.total, sizes.largest_module, n) if stage != "vla" else None
    row = dict(
        stage=stage, method=cfg.method if adapter else "full", config=launch.name, strategy=kind, gpus=n,
        **{k: v / GB for k, v in parts.items()},
        activations=act / GB, reference=reference / GB, vllm=vllm / GB, overhead=OVERHEAD_GB,
        update_phase=update / GB, generation_phase=generation / GB if vllm else None,
        peak=peak / GB, fits=peak <= (1 - cfg.headroom) * cfg.gpu_memory_gb * GB, host_ram_at_load=host / GB,
        deepspeed_estimator=ds / GB if ds is not None else None,
        **kv_cache(sizes, cfg, n) if stage == "grpo" and cfg.vllm else {},
        trained_parameters=trained,
    )
    return row


def plan(cfg: PlanConfig) -> dict:
    """Every stage under every launch, and the recommended launch of each stage."""
    configs = cfg.accelerate_configs or [str(p) for p in sorted(EXAMPLES.glob("*.yaml"))]
    if not configs:
        raise ValueError("No accelerate configs: pass --accelerate_configs='[path.yaml,...]'.")
    launches = [read_launch(Path(c), cfg.num_processes) for c in configs]
    sizes = model_sizes(cfg.model, cfg)
    rows = [r for stage in cfg.stages for launch in launches if (r := plan_stage(stage, launch, sizes, cfg))]
    recommended = {}
    for stage in cfg.stages:
        fitting = sorted((r for r in rows if r["stage"] == stage and r["fits"]), key=lambda r: PREFERENCE.index(r["strategy"]))
        recommended[stage] = fitting[0]["config"] if fitting else None
    return dict(model=cfg.model, gpu_memory_gb=cfg.gpu_memory_gb, sizes=asdict(sizes), settings=asdict(cfg) | {
        "output_dir": str(cfg.output_dir) if cfg.output_dir else None}, rows=rows, recommended=recommended)


def markdown(result: dict) -> str:
    """The plan as a markdown table (GB per GPU) with the recommended launch per stage."""
    sizes = result["sizes"]
    lines = [
        f"Model {result['model']}: {sizes['total'] / 1e9:.2f}B parameters (vision {sizes['vision'] / 1e9:.2f}B), "
        f"{result['gpu_memory_gb']:g} GB per GPU (fits: peak under {1 - result['settings']['headroom']:.0%} of it). "
        "GB per GPU:",
        *adapter_line(result),
        "",
        "| stage | config | GPUs | weights | grads | optimizer | gathered | activations | reference | vLLM | "
        "peak | fits | DeepSpeed est. | host RAM at load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        ds = f"{r['deepspeed_estimator']:.1f}" if r["deepspeed_estimator"] is not None else "-"
        mark = " (recommended)" if result["recommended"].get(r["stage"]) == r["config"] else ""
        lines.append(
            f"| {r['stage']}{'' if r['method'] == 'full' else ' ' + r['method']} | {r['config']}{mark} | {r['gpus']} | {r['weights']:.1f} | {r['gradients']:.1f} | "
            f"{r['optimizer']:.1f} | {r['gathered']:.1f} | {r['activations']:.1f} | {r['reference']:.1f} | "
            f"{r['vllm']:.1f} | {r['peak']:.1f} | {'yes' if r['fits'] else 'no'} | {ds} | {r['host_ram_at_load']:.0f} |"
        )
    lines += kv_cache_lines(result)
    missing = [stage for stage, config in result["recommended"].items() if config is None]
    if missing:
        lines += ["", f"No planned launch fits {', '.join(missing)}: add GPUs, lower the micro-batch or offload."]
    return "\n".join(lines)


def adapter_line(result: dict) -> list[str]:
    """What LoRA / QLoRA trains, under the header (nothing for a full run)."""
    settings, sizes = result["settings"], result["sizes"]
    if settings["method"] == "full":
        return []
    base = "bf16" if settings["method"] == "lora" else "4-bit NF4 (linear layers), float32 rest"
    return [f"{settings['method']}: base frozen in {base}; trained: rank-{settings['lora_r']} adapters "
            f"{sizes['lora'] / 1e6:.1f}M + action-token rows {sizes['action_rows'] / 1e6:.1f}M parameters (float32)."]


def kv_cache(sizes: ModelSizes, cfg: PlanConfig, n: int) -> dict[str, float | int]:
    """vLLM's KV cache on one GPU: what a rollout's completions need and what its share leaves after the weights."""
    completions = -(-cfg.grpo_generation_batch // n)
    per_token = sizes.layers * 2 * sizes.kv_heads * sizes.head_dim * 2
    need = completions * (cfg.grpo_prompt_len + cfg.grpo_completion_len) * per_token
    share = cfg.vllm_gpu_memory_utilization * cfg.gpu_memory_gb * GB
    available = max(share - 2 * sizes.total, 0.0)
    return dict(kv_cache_completions=completions, kv_cache_need=need / GB, kv_cache_available=available / GB,
                kv_cache_fits=need <= available, vllm_share_needed=(2 * sizes.total + need) / (cfg.gpu_memory_gb * GB))


def kv_cache_lines(result: dict) -> list[str]:
    """vLLM's KV cache need per GRPO GPU count (the same under every launch), with a warning where it does not fit."""
    lines = []
    tokens = result["settings"]["grpo_prompt_len"] + result["settings"]["grpo_completion_len"]
    for r in {r["gpus"]: r for r in result["rows"] if "kv_cache_need" in r}.values():
        line = (f"vLLM KV cache (grpo, {r['gpus']} GPUs): {r['kv_cache_completions']} completions x {tokens} tokens "
                f"per GPU need {r['kv_cache_need']:.1f} GB; vLLM's share leaves {r['kv_cache_available']:.1f} GB "
                "after its bf16 weights.")
        if not r["kv_cache_fits"]:
            line += (" WARNING: it does not fit, so vLLM generates in waves (slower): raise "
                     f"--grpo.vllm_gpu_memory_utilization to {r['vllm_share_needed']:.2f} (and plan again), or lower "
                     "--grpo.generation_batch_size.")
        lines.append(line)
    return ["", *lines] if lines else []


def run(cfg: PlanConfig) -> dict:
    result = plan(cfg)
    table = markdown(result)
    print(table)
    if cfg.output_dir:
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        (cfg.output_dir / "plan.md").write_text(table + "\n")
        (cfg.output_dir / "plan.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


main = commands.main_plan  # parses before this module's imports (align/commands.py): --help stays fast
