"""Rewrites of exported ONNX graphs that ONNX Runtime's own optimiser does not make.

Each one checks everything before it touches the graph and leaves a graph it cannot handle as it was.
"""

from __future__ import annotations

import numpy as np

from .session import session


def fold_static_pads(onnx_bytes: bytes) -> bytes:
    """Fold zero ``Pad`` nodes feeding a ``Conv`` into the convolution's own ``pads``.

    timm's TF-style "same" convolutions (``tf_efficientnet_lite*``) export as a ``Pad`` whose amounts
    are computed from the input shape at run time. ONNX Runtime cannot fuse those: each one splits the
    blocked (NCHWc) convolution chain with layout reorders. The
    exported input has a fixed height and width, so the amounts are constants: they are evaluated once
    (at two batch sizes, to make sure they do not depend on it) and moved into the ``Conv``. The result
    is numerically identical. Any doubt leaves the graph as it is."""
    try:
        import onnx
        from onnx import helper

        model = onnx.load_from_string(onnx_bytes)
        g = model.graph
        consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        outputs = {o.name for o in g.output}
        cands = []
        for n in g.node:
            mode = next((a.s for a in n.attribute if a.name == "mode"), b"constant")
            users = consumers.get(n.output[0], []) if n.op_type == "Pad" else []
            if (n.op_type == "Pad" and mode == b"constant" and len(n.input) >= 2 and n.output[0] not in outputs
                    and len(users) == 1 and users[0].op_type == "Conv"
                    and all(a.s in (b"", b"NOTSET") for a in users[0].attribute if a.name == "auto_pad")):
                cands.append((n, users[0]))
        has_subgraphs = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                            for n in g.node for a in n.attribute)
        if not cands or len(g.input) != 1 or has_subgraphs:
            return onnx_bytes
        dims = [d.dim_value if d.HasField("dim_value") else None for d in g.input[0].type.tensor_type.shape.dim]
        if len(dims) != 4 or None in dims[1:]:
            return onnx_bytes
        want = sorted({x for p, _ in cands for x in p.input[1:3] if x})
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.extend(helper.make_empty_tensor_value_info(w) for w in want)
        sess = session(probe.SerializeToString(), optimize=False)  # the graph as written
        dtype = helper.tensor_dtype_to_np_dtype(g.input[0].type.tensor_type.elem_type)
        vals = [dict(zip(want, sess.run(want, {g.input[0].name: np.zeros([b, *dims[1:]], dtype)})))
                for b in (1, 2)]
        folded = 0
        for pad, conv in cands:
            pads = np.asarray(vals[0][pad.input[1]]).ravel()
            value = vals[0].get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else None
            if (len(pads) != 8 or not np.array_equal(pads, np.asarray(vals[1][pad.input[1]]).ravel())
                    or pads.min() < 0 or pads[[0, 1, 4, 5]].any()
                    or (value is not None and np.asarray(value).size and float(np.asarray(value).ravel()[0]) != 0.0)):
                continue
            old = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
            new = [old[0] + int(pads[2]), old[1] + int(pads[3]), old[2] + int(pads[6]), old[3] + int(pads[7])]
            keep = [a for a in conv.attribute if a.name != "pads"]
            del conv.attribute[:]
            conv.attribute.extend([*keep, helper.make_attribute("pads", new)])
            conv.input[0] = pad.input[0]
            folded += 1
        if not folded:
            return onnx_bytes
        need, live = set(outputs), []  # drop the shape arithmetic nothing reads any more
        for n in reversed(g.node):
            if any(o in need for o in n.output):
                live.append(n)
                need.update(i for i in n.input if i)
        del g.node[:]
        g.node.extend(reversed(live))
        onnx.checker.check_model(model)
        return model.SerializeToString()
    except Exception:  # an optimisation only: never fail prediction on it
        return onnx_bytes


def feed_uint8_input(model) -> bool:
    """Let the first quantised convolution read the uint8 image itself; returns whether it could.

    A quantised graph normalises in float and quantises straight back: ``Cast -> Sub(mean) -> Div(std)
    -> QuantizeLinear(scale, zero point) -> DequantizeLinear -> Conv``. With one mean and std for all
    channels, calibration on images spanning 0-255 gives ``scale = 1/std`` and ``zero point =
    round(mean)``, so the quantised value is the pixel itself (to within the rounding of ``mean``):
    here the ``DequantizeLinear`` reads the uint8 tensor directly and the four float nodes go. The
    half-step left when ``mean`` is not an integer (127.5) is moved into the convolution's bias, exact
    except on the padded border. Written by hand: ONNX Runtime's quantiser has no such pass, and its
    graph optimiser fuses ``DequantizeLinear -> Conv -> QuantizeLinear`` but never a float prologue.
    Any other graph shape (per-channel normalisation, other calibration ranges) is left as it is.
    """
    from onnx import numpy_helper as nh

    g = model.graph
    init = {i.name: i for i in g.initializer}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in g.node for o in n.output}
    # the pixels must arrive as uint8 (the exported graphs' "image" input) for a uint8 zero point to fit
    uint8_input = bool(g.input) and g.input[0].type.tensor_type.elem_type == 2  # onnx.TensorProto.UINT8

    def scalar(name: str) -> float | None:
        if name in init:
            a = nh.to_array(init[name])
        elif name in producer and producer[name].op_type == "Constant":
            a = nh.to_array(producer[name].attribute[0].t)
        else:
            return None
        flat = a.reshape(-1)
        return float(flat[0]) if flat.size and (flat == flat[0]).all() else None  # one value, maybe per channel

    for cast in g.node:
        chain = [cast]
        for op in ("Sub", "Div", "QuantizeLinear"):
            nxt = consumers.get(chain[-1].output[0], [])
            if len(nxt) != 1 or nxt[0].op_type != op:
                break
            chain.append(nxt[0])
        if cast.op_type != "Cast" or len(chain) != 4:
            continue
        _, sub, div, q = chain
        m, s, qs, qz = scalar(sub.input[1]), scalar(div.input[1]), scalar(q.input[1]), scalar(q.input[2])
        if None in (m, s, qs, qz) or abs(qs * s - 1) > 1e-5 or qz != round(m) or not 0 <= qz <= 255:
            return False
        dqs = consumers.get(q.output[0], [])
        convs = [c for dq in dqs for c in consumers.get(dq.output[0], [])]

        def quantised_initializers(name: str) -> bool:  # a DequantizeLinear of stored (weight / bias) tensors
            dq = producer.get(name)
            return dq is not None and dq.op_type == "DequantizeLinear" and all(i in init for i in dq.input[:2])

        # everything is checked before the graph is touched: a graph this pass cannot handle stays as it was
        if (not dqs or any(d.op_type != "DequantizeLinear" for d in dqs)
                or any(c.op_type != "Conv" or len(c.input) < 3 or not quantised_initializers(c.input[1])
                       or not quantised_initializers(c.input[2]) or len(producer[c.input[1]].input) < 3
                       for c in convs)
                or not uint8_input):
            return False
        delta = (round(m) - m) / s  # (x - m) / s = (x - round(m)) / s + delta
        for dq in dqs:
            dq.input[0] = cast.input[0]  # the uint8 pixels, quantised with scale 1/std and zero point round(mean)
        for conv in convs:
            wdq, bdq = producer[conv.input[1]], producer[conv.input[2]]
            wq, wscale, wzp = (nh.to_array(init[n]) for n in wdq.input[:3])
            shape = [-1] + [1] * (wq.ndim - 1)
            w = (wq.astype(np.float64) - wzp.reshape(shape)) * wscale.reshape(shape)
            bq, bscale = nh.to_array(init[bdq.input[0]]), nh.to_array(init[bdq.input[1]]).astype(np.float64)
            b = bq * bscale + delta * w.reshape(len(w), -1).sum(axis=1)
            init[bdq.input[0]].CopyFrom(nh.from_array(np.round(b / bscale).astype(np.int32), bdq.input[0]))
        for n in (q, div, sub, cast):
            g.node.remove(n)
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        for name in [k for k in init if k not in used]:
            g.initializer.remove(init[name])
        return True
    return False


__all__ = ["feed_uint8_input", "fold_static_pads"]
