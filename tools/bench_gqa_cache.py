"""Microbenchmark (issue 26): 30 layers of ONNX Runtime's GroupQueryAttention for one decode token,
each layer with its own KV buffer (past and present one OrtValue), with the cache in fp32, fp16,
and int8 per tensor / per channel (static scales), at 512 and 2016 keys; SmolLM2-135M's shape
(9 query heads over 3 KV heads, head 64, a per-head bias). Prints µs per layer and each output's
largest difference from the fp32 cache's (the int8 ones: their rounding).

    python tools/bench_gqa_cache.py
"""

import time

import numpy as np
import onnxruntime as ort
from onnx import helper, TensorProto as TP
H, Hkv, D, L = 9, 3, 64, 30
def model(cache_t, attrs, scale_shape=None):
    f = lambda n, s, t=TP.FLOAT: helper.make_tensor_value_info(n, t, s)
    nodes, ins, outs = [], [f("q",[1,1,H*D]), f("k",[1,1,Hkv*D]), f("v",[1,1,Hkv*D]), f("seqlens",[1],TP.INT32), f("total",[],TP.INT32), f("bias",[1,H,1,"T"])], []
    if scale_shape: ins += [f("ks", scale_shape), f("vs", scale_shape)]
    for l in range(L):
        inputs = ["q","k","v",f"pk{l}",f"pv{l}","seqlens","total","","","","bias"]
        if scale_shape: inputs += ["", "ks", "vs"]
        nodes.append(helper.make_node("GroupQueryAttention", inputs, [f"y{l}",f"pk{l}o",f"pv{l}o"], domain="com.microsoft", num_heads=H, kv_num_heads=Hkv, **attrs))
        ins += [f(f"pk{l}",[1,Hkv,"C",D], cache_t), f(f"pv{l}",[1,Hkv,"C",D], cache_t)]
        outs += [f(f"y{l}",None), f(f"pk{l}o",None, cache_t), f(f"pv{l}o",None, cache_t)]
    g = helper.make_graph(nodes, "g", ins, outs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("",21), helper.make_opsetid("com.microsoft",1)])
rng = np.random.default_rng(0)
cases = [("fp32", TP.FLOAT, np.float32, {}, None),
         ("fp16cache", TP.FLOAT16, np.float16, {}, None),
         ("int8-tensor", TP.INT8, np.int8, {"kv_cache_bit_width": 8, "k_quant_type": "PER_TENSOR", "v_quant_type": "PER_TENSOR"}, [1]),
         ("int8-channel", TP.INT8, np.int8, {"kv_cache_bit_width": 8, "k_quant_type": "PER_CHANNEL", "v_quant_type": "PER_CHANNEL"}, [1, Hkv, 1, D]),
         ]
for T in (512, 2016):
    ref = None
    for name, ct, npdt, attrs, sshape in cases:
        o = ort.SessionOptions(); o.intra_op_num_threads = 2
        try:
            s = ort.InferenceSession(model(ct, attrs, sshape).SerializeToString(), o, providers=["CPUExecutionProvider"])
        except Exception as e:
            print(name, "fails to load:", str(e)[:300]); continue
        b = s.io_binding(); keep = []
        C = T + 64
        r = np.random.default_rng(1)
        for l in range(L):
            for n in ("pk", "pv"):
                x = r.normal(size=(1,Hkv,C,D)).astype(np.float32); x[:,:,T:] = 0
                a = (np.clip(np.round(x / 0.03), -127, 127).astype(npdt) if npdt == np.int8 else x.astype(npdt)); keep.append(a)
                v = ort.OrtValue.ortvalue_from_numpy(a); keep.append(v)
                b.bind_ortvalue_input(f"{n}{l}", v); b.bind_ortvalue_output(f"{n}{l}o", v)
            b.bind_output(f"y{l}", "cpu")
        feeds = [("q", r.normal(size=(1,1,H*D)).astype(np.float32)), ("k", r.normal(size=(1,1,Hkv*D)).astype(np.float32)), ("v", r.normal(size=(1,1,Hkv*D)).astype(np.float32)),
                     ("seqlens", np.array([T-1], np.int32)), ("total", np.array(T, np.int32)), ("bias", np.zeros((1,H,1,T), np.float32))]
        if sshape: feeds += [("ks", np.full(sshape, 0.03, np.float32)), ("vs", np.full(sshape, 0.03, np.float32))]
        for n, x in feeds: b.bind_cpu_input(n, x)
        try:
            for _ in range(5): s.run_with_iobinding(b)
        except Exception as e:
            print(name, "fails to run:", str(e)[:300]); continue
        t = time.perf_counter(); n = 60
        for _ in range(n): s.run_with_iobinding(b)
        y = b.get_outputs()[2].numpy()  # bound in order: pk0, pv0, y0
        ref = y if ref is None else ref
        print(f"T={T} {name}: {(time.perf_counter()-t)/n*1e6/L:.0f} us per layer; out diff vs fp32 {np.abs(y-ref).max():.3g}")
