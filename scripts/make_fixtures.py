#!/usr/bin/env python3
"""Builds the model fixtures of rocmforge-models from HF transformers, the reference.

Tiny random models (hidden 64, 2 or 3 layers, vocab 512) of each supported architecture,
a byte-level BPE tokenizer trained here on a short text of our own, and, per model and
prompt, what transformers computes: prompt ids, last-position logits, per-position argmax
and a 24-token greedy continuation. Also the chat template rendered by transformers.

Run where torch and transformers are installed (the H100 machine has both); it runs on
the CPU in float32 so the figures do not depend on the GPU:

    python3 scripts/make_fixtures.py tests/fixtures/models

Writes into a temporary folder and renames it into place at the end.
"""
import json
import os
import shutil
import sys

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

TEXT = """
The lighthouse keeper counted the ships each evening and wrote their names in a blue book.
Some nights the fog came in so thick that he counted only the horns, low and patient.
His daughter learned the horns before she learned the alphabet: the ferry, the tug,
the grain barge from the north that always sounded twice, as if it were apologising.
When the keeper grew old, she kept the book herself, and added a column for the weather.
A kernel is a small program that runs on many threads at once; each thread reads a little,
computes a little and writes a little, and the memory decides how fast the whole thing goes.
Rust makes the owner of every buffer plain to see, so a pointer is freed exactly once.
Attention compares every query with every key, scales the scores, and mixes the values.
Seven green parrots argued over a mango while the market opened its shutters around them.
The baker sold the first loaf at six, the last at noon, and closed the door for a nap.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2048 4096. Punctuation, too; "quotes" and (brackets)!
"""

PROMPTS = [
    "The lighthouse keeper counted",
    "A kernel is a small program that runs on many threads",
    "Seven green parrots argued over the baker and the grain barge, 42 times!",
]
CHAT = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Who kept the blue book?"},
    {"role": "assistant", "content": "The keeper's daughter."},
    {"role": "user", "content": "  And what did she add?  "},
]
CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'].strip() + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
INST = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set sys = messages[0]['content'] + '\\n\\n' %}{%- set msgs = messages[1:] %}"
    "{%- else %}{%- set sys = '' %}{%- set msgs = messages %}{%- endif %}"
    "{%- for message in msgs %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'user' %}{{- '[INST] ' + (sys if loop.first else '') + message['content'] | trim + ' [/INST]' }}"
    "{%- else %}{{- ' ' + message['content'] + eos_token }}{%- endif %}"
    "{%- endfor %}"
)
SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
VOCAB = 512
CONT = 24


def train_tokenizer(add_bos):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([line for line in TEXT.splitlines() if line], trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def model_specs():
    common = dict(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=256,
        initializer_range=0.1,
        bos_token_id=0,
        eos_token_id=1,
    )
    return [
        # Llama 3.1 style: GQA 4/2, llama3 rope scaling that moves some frequencies at these lengths.
        ("llama", transformers.LlamaConfig, transformers.LlamaForCausalLM, True, INST, dict(
            common, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        ), "v5", None),
        # Mistral: sliding window shorter than the prompts plus continuation; 3 layers.
        ("mistral", transformers.MistralConfig, transformers.MistralForCausalLM, True, INST, dict(
            common, num_hidden_layers=3, head_dim=16, sliding_window=12, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ), "v4", None),
        # Qwen2: QKV bias, tied embeddings, linear rope scaling.
        ("qwen2", transformers.Qwen2Config, transformers.Qwen2ForCausalLM, False, CHATML, dict(
            common, tie_word_embeddings=True, rms_norm_eps=1e-6, eos_token_id=3,
            rope_parameters={"rope_type": "linear", "rope_theta": 1000000.0, "factor": 2.0},
        ), "v4", None),
        # Qwen3: q/k RMSNorm, explicit head_dim (heads x head_dim != hidden), sharded weights.
        ("qwen3", transformers.Qwen3Config, transformers.Qwen3ForCausalLM, False, CHATML, dict(
            common, head_dim=32, tie_word_embeddings=False, rms_norm_eps=1e-6, eos_token_id=3,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ), "v5", "200KB"),
    ]


def to_v4(cfg):
    """The transformers 4.x form: rope_theta / rope_scaling / torch_dtype."""
    rp = cfg.pop("rope_parameters", None)
    if rp is not None:
        rp = dict(rp)
        cfg["rope_theta"] = rp.pop("rope_theta")
        cfg["rope_scaling"] = None if rp.get("rope_type") == "default" else rp
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    cfg.pop("layer_types", None)
    return cfg


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def greedy(model, ids, n):
    ids = list(ids)
    out = []
    for _ in range(n):
        nxt = int(torch.argmax(logits_of(model, ids)[-1]))
        out.append(nxt)
        ids.append(nxt)
    return out


def main():
    dest = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/models"
    tmp = dest.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    torch.set_num_threads(4)
    summary = {"transformers": transformers.__version__, "torch": torch.__version__, "models": []}
    for seed, (name, cfg_cls, model_cls, add_bos, template, kw, form, shard) in enumerate(model_specs()):
        torch.manual_seed(1000 + seed)
        tok = train_tokenizer(add_bos)
        cfg = cfg_cls(**kw)
        cfg._attn_implementation = "eager"
        model = model_cls(cfg).float().eval()
        # Random norm weights too, so a loader that skips them is caught.
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "norm" in pname or pname.endswith(".bias"):
                    p.copy_(1.0 + 0.2 * torch.randn_like(p) if "norm" in pname else 0.1 * torch.randn_like(p))
        path = os.path.join(tmp, name)
        model.save_pretrained(path, safe_serialization=True, **({"max_shard_size": shard} if shard else {}))
        fast = transformers.PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>" if name in ("llama", "mistral") else "<|im_end|>",
        )
        fast.chat_template = template
        fast.save_pretrained(path)
        eos = [1] if name in ("llama", "mistral") else [3, 1]
        with open(os.path.join(path, "generation_config.json"), "w") as f:
            json.dump({"bos_token_id": 0, "eos_token_id": eos, "do_sample": True, "temperature": 0.7, "top_p": 0.9,
                       "top_k": 40, "repetition_penalty": 1.05}, f, indent=2)
        with open(os.path.join(path, "config.json")) as f:
            saved = json.load(f)
        if form == "v4":
            saved = to_v4(saved)
            # transformers 4.x kept the chat template inside tokenizer_config.json.
            jinja = os.path.join(path, "chat_template.jinja")
            if os.path.exists(jinja):
                os.remove(jinja)
            with open(os.path.join(path, "tokenizer_config.json")) as f:
                tcfg = json.load(f)
            tcfg["chat_template"] = template
            with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
                json.dump(tcfg, f, indent=2)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(saved, f, indent=2)

        rec = {"name": name, "config_form": form, "prompts": []}
        for prompt in PROMPTS:
            ids = fast(prompt)["input_ids"]
            lg = logits_of(model, ids)
            rec["prompts"].append({
                "prompt": prompt,
                "ids": ids,
                "last_logits": [float(x) for x in lg[-1]],
                "argmax": [int(x) for x in torch.argmax(lg, dim=-1)],
                "greedy": greedy(model, ids, CONT),
            })
        chat_text = fast.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
        rec["chat"] = {"messages": CHAT, "text": chat_text, "ids": fast(chat_text, add_special_tokens=False)["input_ids"]}
        with open(os.path.join(path, "reference.json"), "w") as f:
            json.dump(rec, f)
        summary["models"].append(name)

        if name == "llama":
            # The bf16 copy: same weights rounded; compared with the f32 reference by argmax.
            bpath = os.path.join(tmp, "llama-bf16")
            model.to(torch.bfloat16).save_pretrained(bpath, safe_serialization=True)
            fast.save_pretrained(bpath)
            shutil.copy(os.path.join(path, "generation_config.json"), bpath)
            with open(os.path.join(bpath, "config.json")) as f:
                bcfg = json.load(f)
            argmax = []
            for prompt in PROMPTS:
                argmax.append([int(x) for x in torch.argmax(logits_of(model, fast(prompt)["input_ids"]), dim=-1)])
            with open(os.path.join(bpath, "reference.json"), "w") as f:
                json.dump({"name": "llama-bf16", "dtype": str(bcfg.get("dtype", bcfg.get("torch_dtype"))),
                           "reference": "llama", "hf_bf16_argmax": argmax}, f)
            summary["models"].append("llama-bf16")
    with open(os.path.join(tmp, "SOURCE.json"), "w") as f:
        json.dump(summary, f, indent=2)
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(tmp, dest)
    print(json.dumps(summary))
    for root, _, files in sorted(os.walk(dest)):
        for fn in sorted(files):
            print(os.path.join(root, fn), os.path.getsize(os.path.join(root, fn)))


if __name__ == "__main__":
    main()
