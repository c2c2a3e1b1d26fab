"""`align plan`'s logits (10 bytes per element), attention kernel and vLLM KV cache, on Qwen2.5-VL-7B's config."""

import dataclasses

import pytest
from test_plan import qwen25_vl_7b_config  # noqa: F401  (the fixture)

from lerobot_roboalign.align import plan


@pytest.fixture(scope="module")
def sizes(qwen25_vl_7b_config):  # noqa: F811
    return plan.model_sizes(str(qwen25_vl_7b_config), plan.PlanConfig())


def test_each_logit_element_costs_10_bytes(sizes):
    wider = dataclasses.replace(sizes, vocab=sizes.vocab + 1)
    for checkpointing in (True, False):
        extra = plan.activations(wider, 4, 2048, 2048, checkpointing) - plan.activations(sizes, 4, 2048, 2048, checkpointing)
        assert extra == 4 * 2048 * 10  # bf16 logits, their float32 upcast and its float32 gradient


def test_eager_attention_counts_the_attention_matrix(sizes):
    sdpa = plan.activations(sizes, 4, 2048, 2048, True, "sdpa")
    assert plan.activations(sizes, 4, 2048, 2048, True, "flash_attention_2") == sdpa
    assert plan.activations(sizes, 4, 2048, 2048, True, "eager") - sdpa == 8 * 4 * 28 * 2048**2  # 28 heads
    with pytest.raises(ValueError, match="choose from"):
        plan.PlanConfig(attn_implementation="flash")


def test_vllm_kv_cache_need_and_warning(qwen25_vl_7b_config):  # noqa: F811
    result = plan.plan(plan.PlanConfig(model=str(qwen25_vl_7b_config), stages=["grpo"]))
    row = result["rows"][0]
    # 2560 completions / 8 GPUs x 1024 tokens x 28 layers x (K, V) x 4 KV heads x 128 dims x 2 bytes
    assert row["kv_cache_need"] == pytest.approx(320 * 1024 * 28 * 2 * 4 * 128 * 2 / 1e9)
    assert row["kv_cache_available"] == pytest.approx(0.3 * 80 - 2 * result["sizes"]["total"] / 1e9)
    assert not row["kv_cache_fits"] and "WARNING: it does not fit" in plan.markdown(result)
    roomy = plan.plan(plan.PlanConfig(model=str(qwen25_vl_7b_config), stages=["grpo"],
                                      vllm_gpu_memory_utilization=row["vllm_share_needed"] + 0.01))
    assert roomy["rows"][0]["kv_cache_fits"] and "WARNING" not in plan.markdown(roomy)
    assert "kv_cache_need" not in plan.plan(plan.PlanConfig(model=str(qwen25_vl_7b_config), stages=["sft"]))["rows"][0]


def test_fsdp_grpo_host_ram_counts_the_reference_on_every_rank(qwen25_vl_7b_config):  # noqa: F811
    rows = {r["strategy"]: r for r in plan.plan(plan.PlanConfig(model=str(qwen25_vl_7b_config), stages=["grpo"]))["rows"]}
    total = plan.model_sizes(str(qwen25_vl_7b_config), plan.PlanConfig()).total
    assert rows["fsdp"]["host_ram_at_load"] == pytest.approx((4 * total + 8 * 2 * total) / 1e9)
    assert rows["zero3"]["host_ram_at_load"] == pytest.approx(4 * total / 1e9)
