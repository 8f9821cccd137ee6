#!/usr/bin/env python3
"""Make loraguard's test fixtures with the reference implementations.

Creates, under fixtures/tiny-llama/:
  base.gguf                 a tiny llama-architecture model (random weights,
                            hidden 64, 2 layers, 4 heads, 2 KV heads), written
                            with llama.cpp's own gguf-py and its HF converter's
                            Q/K permutation (conversion/llama.py);
  adapters/<name>/          real PEFT adapters on it, saved by PEFT;
  reference.safetensors     transformers+PEFT logits for the base and each
                            adapter on a fixed token sequence.

and, under fixtures/smollm2/, a real LoRA trained with PEFT on
SmolLM2-135M-Instruct (dequantized from the PyPI GGUF) with the change in
logits it causes under transformers+PEFT.

Usage: python3 scripts/make-fixtures.py [--skip-smollm2]
Environment: scripts/requirements-fixtures.txt; llama.cpp from
scripts/fetch-anchor.sh; the SmolLM2 GGUF from scripts/fetch-model.sh.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
SEED = 20261124

# The token sequence every reference is computed on (ids < VOCAB).
TOKENS = [1, 17, 42, 99, 7, 200, 3, 150, 64, 12, 255, 31]


def llama_cpp_dir() -> Path:
    out = subprocess.check_output(["bash", str(ROOT / "scripts/fetch-anchor.sh")], text=True)
    return Path(out.strip().splitlines()[-1])


def import_llama_cpp():
    d = llama_cpp_dir()
    sys.path.insert(0, str(d / "gguf-py"))
    sys.path.insert(0, str(d))
    import gguf  # noqa: E402  (llama.cpp's own gguf-py)
    from conversion.llama import LlamaModel  # noqa: E402

    return gguf, LlamaModel.permute


# ---------------------------------------------------------------- tiny model
VOCAB = 259  # <unk> <s> </s> + 256 byte tokens
HP = dict(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, ctx=256, eps=1e-5, theta=10000.0)


def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HP["hidden"],
        intermediate_size=HP["ffn"],
        num_hidden_layers=HP["layers"],
        num_attention_heads=HP["heads"],
        num_key_value_heads=HP["kv_heads"],
        max_position_embeddings=HP["ctx"],
        rms_norm_eps=HP["eps"],
        rope_theta=HP["theta"],
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        # Larger-than-default weights so every layer visibly shapes the logits.
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * 0.15)
    return model


def write_tiny_gguf(model, path: Path, gguf, permute):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("loraguard-tiny-llama")
    w.add_block_count(HP["layers"])
    w.add_context_length(HP["ctx"])
    w.add_embedding_length(HP["hidden"])
    w.add_feed_forward_length(HP["ffn"])
    w.add_head_count(HP["heads"])
    w.add_head_count_kv(HP["kv_heads"])
    w.add_rope_dimension_count(HP["hidden"] // HP["heads"])
    w.add_rope_freq_base(HP["theta"])
    w.add_layer_norm_rms_eps(HP["eps"])
    w.add_vocab_size(VOCAB)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    # A minimal SentencePiece-style vocabulary: specials then byte tokens.
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(HP["layers"]):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    for hf, gg in names.items():
        t = sd[hf]
        if hf.endswith("q_proj.weight"):
            t = permute(t, HP["heads"], HP["heads"])
        elif hf.endswith("k_proj.weight"):
            t = permute(t, HP["heads"], HP["kv_heads"])
        w.add_tensor(gg, t.numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# name -> (LoraConfig kwargs, save dtype)
TINY_ADAPTERS = {
    "plain": (dict(r=8, lora_alpha=16, target_modules=ALL), torch.float32),
    "rslora-patterns": (
        dict(
            r=8,
            lora_alpha=8,
            use_rslora=True,
            target_modules=ALL,
            rank_pattern={"layers.1.self_attn.q_proj": 4, "v_proj": 2},
            alpha_pattern={"k_proj": 32, "model.layers.0.mlp.down_proj": 3},
        ),
        torch.bfloat16,
    ),
    "gqa-k-only": (dict(r=4, lora_alpha=8, target_modules=["k_proj"]), torch.float16),
    # PEFT resets fan_in_fan_out for nn.Linear (it only applies to GPT-2's
    # Conv1D); the flag stays in the saved config and must not change ΔW.
    "fan-in-fan-out": (dict(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], fan_in_fan_out=True), torch.float32),
    "embed-head": (dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "lm_head", "o_proj"]), torch.float32),
    # Refused by convert; kept to pin the error paths on real PEFT output.
    "dora": (dict(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True), torch.float32),
    "modules-to-save": (dict(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["lm_head"]), torch.float32),
}
REFUSED = {"dora", "modules-to-save"}


def make_adapter(base, cfg_kwargs, dtype, out: Path, seed: int):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(init_lora_weights=False, **cfg_kwargs))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.mul_(0.5)  # noticeable but sane updates
            if "lora_magnitude" in n:
                p.mul_(2.2)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(str(out))
    (out / "README.md").unlink(missing_ok=True)
    if cfg_kwargs.get("fan_in_fan_out"):
        # PEFT flips the flag to False in memory (and so in the saved config)
        # when the target is nn.Linear; restore it as a user's file carries it.
        cfg_path = out / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["fan_in_fan_out"] = True
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    # Re-save the factors in the requested dtype (PEFT trains in f32).
    from safetensors.torch import load_file, save_file

    st = out / "adapter_model.safetensors"
    tensors = {k: v.to(dtype).contiguous() for k, v in load_file(str(st)).items()}
    save_file(tensors, str(st), metadata={"format": "pt"})
    return model


@torch.no_grad()
def logits_of(model, tokens):
    ids = torch.tensor([tokens])
    return model(input_ids=ids).logits[0].float().numpy()


def reload_adapter_logits(base, adapter_dir: Path, tokens):
    """Logits of base + adapter as PEFT loads it from disk (dtype included)."""
    from peft import PeftModel

    m = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_" in n:
                p.data = p.data.float()
    out = logits_of(m, tokens)
    m.unload()
    return out


def make_tiny(gguf, permute):
    from safetensors.numpy import save_file

    d = FIX / "tiny-llama"
    (d / "adapters").mkdir(parents=True, exist_ok=True)
    base = tiny_model()
    write_tiny_gguf(base, d / "base.gguf", gguf, permute)
    refs = {"tokens": np.array(TOKENS, dtype=np.int32), "base": logits_of(base, TOKENS)}
    for i, (name, (kw, dtype)) in enumerate(TINY_ADAPTERS.items()):
        fresh = tiny_model()
        make_adapter(fresh, kw, dtype, d / "adapters" / name, SEED + 1 + i)
        if name in REFUSED:
            continue
        refs[name] = reload_adapter_logits(tiny_model(), d / "adapters" / name, TOKENS)
        delta = np.abs(refs[name] - refs["base"]).max()
        print(f"tiny {name}: max |Δlogit| vs base = {delta:.3f}")
        assert delta > 0.05, f"adapter {name} barely changes the logits"
    save_file({k: np.ascontiguousarray(v) for k, v in refs.items()}, str(d / "reference.safetensors"))


# ---------------------------------------------------------------- SmolLM2
SMOL_PROMPTS = [
    "Name three colors of the rainbow.",
    "What is the capital of France?",
    "Give me a synonym for happy.",
    "How many legs does a spider have?",
    "Write a haiku about the sea.",
    "What is two plus two?",
    "Suggest a name for a cat.",
    "Translate 'good morning' into Spanish.",
]


def make_smollm2(model_path: Path):
    from peft import LoraConfig, get_peft_model
    from safetensors.numpy import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = FIX / "smollm2"
    d.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(model_path.parent), gguf_file=model_path.name)
    tok.pad_token = tok.eos_token

    def load():
        m = AutoModelForCausalLM.from_pretrained(
            str(model_path.parent), gguf_file=model_path.name, torch_dtype=torch.float32
        ).eval()
        # SmolLM2 ties lm_head to the embedding; the GGUF has no output.weight
        # and transformers' GGUF loader leaves lm_head unset, so tie it here.
        m.lm_head.weight = m.model.embed_tokens.weight
        return m
    base = load()
    torch.manual_seed(SEED)
    # A small real fine-tune: answer every question like a pirate.
    texts = []
    for p in SMOL_PROMPTS:
        msgs = [{"role": "user", "content": p}, {"role": "assistant", "content": "Arr matey! " + p.rstrip("?.!") + ", says the pirate. Yo ho ho!"}]
        texts.append(tok.apply_chat_template(msgs, tokenize=False))
    batch = tok(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], lora_dropout=0.0)
    model = get_peft_model(base, cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    model.train()
    losses = []
    steps = 30
    for step in range(steps):
        out = model(**batch, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(out.loss))
    model.eval()
    out_dir = d / "pirate-lora"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(str(out_dir))
    (out_dir / "README.md").unlink(missing_ok=True)
    (out_dir / "TRAINING.md").write_text(
        "# pirate-lora\n\n"
        f"PEFT LoRA r=8, alpha=16 on q/k/v/o of SmolLM2-135M-Instruct (dequantized Q4_1 GGUF).\n"
        f"Data: {len(SMOL_PROMPTS)} chat turns answered in a pirate voice (scripts/make-fixtures.py).\n"
        f"AdamW lr 3e-4, {steps} full-batch steps, seed {SEED}. Loss {losses[0]:.3f} -> {losses[-1]:.3f}.\n"
    )
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of Italy?"}], tokenize=False, add_generation_prompt=True)
    ids = tok(prompt)["input_ids"]
    fresh = load()
    base_logits = logits_of(fresh, ids)
    adapted = reload_adapter_logits(fresh, out_dir, ids)
    save_file(
        {"tokens": np.array(ids, dtype=np.int32), "delta": np.ascontiguousarray((adapted - base_logits)[-4:])},
        str(d / "reference.safetensors"),
    )
    top = tok.decode([int(base_logits[-1].argmax())])
    print(f"smollm2: base model's next token after the prompt: {top!r}")
    print(f"smollm2: loss {losses[0]:.3f} -> {losses[-1]:.3f}, {len(ids)} prompt tokens")


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-smollm2", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 2)
    gguf, permute = import_llama_cpp()
    make_tiny(gguf, permute)
    if not args.skip_smollm2:
        model = subprocess.check_output(["bash", str(ROOT / "scripts/fetch-model.sh")], text=True).strip().splitlines()[-1]
        make_smollm2(Path(model))
    lines = []
    for p in sorted(FIX.rglob("*")):
        if p.is_file() and p.name not in ("README.md", "SHA256SUMS"):
            lines.append(f"{sha256(p)}  {p.relative_to(FIX)}")
    (FIX / "SHA256SUMS").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
