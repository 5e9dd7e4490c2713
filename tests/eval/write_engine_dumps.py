"""Writes routing dumps in each engine's exact layout, for trace_import_test.

    /usr/bin/python3 write_engine_dumps.py OUT_DIR

numpy writes the files itself (numpy.save, numpy.savez,
numpy.savez_compressed), as vLLM and Transformers users save them; SGLang's
responses are built as its OpenAI-compatible and native servers return them.
The values are the test's hand-made expectation: keep the two in step.
"""
import base64
import json
import os
import sys

import numpy as np

out = sys.argv[1]


def path(name):
    return os.path.join(out, name)


# (tokens, layers, top_k) = (3, 3, 2); layer 0 is dense (zeros, as vLLM and
# SGLang leave it).
R0 = np.array([[[0, 0], [1, 5], [7, 2]],
               [[0, 0], [5, 1], [2, 3]],
               [[0, 0], [4, 6], [2, 7]]])
# (2, 3, 2), the second request of the archives.
R1 = np.array([[[0, 0], [3, 4], [0, 1]],
               [[0, 0], [4, 3], [1, 6]]])

# vLLM: one .npy per request, any integer dtype and byte order.
np.save(path("req-0.npy"), R0.astype("<i8"))
np.save(path("req-0-be.npy"), R0.astype(">i4"))
np.save(path("req-0-u8.npy"), R0.astype("|u1"))
np.savez(path("requests.npz"), first=R0.astype("<i4"), second=R1.astype(">i8"))
np.savez_compressed(path("requests-z.npz"), first=R0.astype("<i2"), second=R1.astype("<i4"))

# Malformed vLLM inputs.
with open(path("req-0.npy"), "rb") as f:
    whole = f.read()
with open(path("truncated.npy"), "wb") as f:
    f.write(whole[:-5])
np.save(path("rank2.npy"), R0.reshape(3, 6).astype("<i4"))
np.save(path("floats.npy"), R0.astype("<f4"))
np.save(path("fortran.npy"), np.asfortranarray(np.arange(8, dtype="<i4").reshape(2, 2, 2)))
np.save(path("structured.npy"), np.zeros(3, dtype=[("a", "<i4"), ("b", "<f4")]))
dup = R0.copy()
dup[1, 2] = [3, 3]
np.save(path("duplicate.npy"), dup.astype("<i4"))
partial = R0.copy()
partial[2, 1] = [4, -1]
np.save(path("partial.npy"), partial.astype("<i4"))
with open(path("not-a-zip.npz"), "wb") as f:
    f.write(b"PK\x03\x04 this is not an archive")
# A token the engine did not route (a prefix-cache hit): all -1 at layer 1.
unrouted = R0.copy()
unrouted[0, 1] = [-1, -1]
np.save(path("unrouted.npy"), unrouted.astype("<i4"))


def b64(a):
    return base64.b64encode(np.ascontiguousarray(a, dtype="<i4").tobytes()).decode()


# SGLang: 2 prompt tokens and 2 completion tokens route 3 rows (the last
# generated token is not computed).
chat = {"id": "chatcmpl-7", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"},
                     "finish_reason": "stop", "sgl_ext": {"routed_experts": b64(R0)}}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}}
# No usage: the prompt boundary is unknown.
completion = {"id": "cmpl-8", "object": "text_completion", "model": "m",
              "choices": [{"index": 0, "text": "4", "sgl_ext": {"routed_experts": b64(R1)}}]}
# Native /generate, a batch of one, everything in meta_info.
native = [{"text": "4", "meta_info": {"id": "gen-9", "prompt_tokens": 1, "completion_tokens": 1,
                                      "routed_experts": b64(R1)}}]
with open(path("sglang.jsonl"), "w") as f:
    for response in (chat, completion, native):
        f.write(json.dumps(response) + "\n")
with open(path("sglang-bad-base64.jsonl"), "w") as f:
    bad = json.loads(json.dumps(chat))
    bad["choices"][0]["sgl_ext"]["routed_experts"] = "not*base64!"
    f.write(json.dumps(bad) + "\n")
with open(path("sglang-no-routing.jsonl"), "w") as f:
    bare = json.loads(json.dumps(chat))
    del bare["choices"][0]["sgl_ext"]
    f.write(json.dumps(bare) + "\n")

# Transformers: router logits, (layers, tokens, num_experts) = (3, 2, 4);
# layer 0 is all zeros (dense). Halves are exact in float16.
LOGITS = np.array([[[0, 0, 0, 0], [0, 0, 0, 0]],
                   [[0.5, 2.0, -1.0, 1.5], [3.0, -2.0, 0.25, 0.0]],
                   [[-0.5, -1.5, 2.5, 1.0], [1.0, 1.25, 1.5, 1.75]]])
np.save(path("logits.npy"), LOGITS.astype("<f4"))
np.savez(path("logits-layers.npz"), *[layer.astype("<f2") for layer in LOGITS])
np.savez(path("logits-requests.npz"), a=LOGITS.astype(">f8"), b=LOGITS[:, :1].astype("<f4"))
