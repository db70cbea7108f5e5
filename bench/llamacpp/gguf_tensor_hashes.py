#!/usr/bin/env python3
"""Prints one line per tensor of a GGUF file: name, ggml type id, dims (comma-separated) and the FNV-1a
64-bit hash of its bytes (hex). tests/test_mxfp4.cpp computes the same lines for moe's own files.

    gguf_tensor_hashes.py FILE.gguf
"""
import struct
import sys

# ggml type id -> (block elements, block bytes), for the types these checks meet.
BLOCK = {0: (1, 4), 1: (1, 2), 8: (32, 34), 30: (1, 2), 39: (32, 17)}


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def main(path):
    with open(path, 'rb') as f:
        buf = f.read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from('<' + fmt, buf, pos)
        pos += struct.calcsize('<' + fmt)
        return v[0] if len(v) == 1 else v

    def string():
        nonlocal pos
        n = take('Q')
        s = buf[pos:pos + n].decode()
        pos += n
        return s

    scalar = {0: 'B', 1: 'b', 2: 'H', 3: 'h', 4: 'I', 5: 'i', 6: 'f', 7: 'B', 10: 'Q', 11: 'q', 12: 'd'}

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            at, n = take('I'), take('Q')
            return [value(at) for _ in range(n)]
        return take(scalar[t])

    assert buf[:4] == b'GGUF'
    pos = 4
    take('I')
    n_tensors, n_kv = take('Q'), take('Q')
    alignment = 32
    for _ in range(n_kv):
        key = string()
        v = value(take('I'))
        if key == 'general.alignment':
            alignment = v
    infos = []
    for _ in range(n_tensors):
        name = string()
        nd = take('I')
        dims = [take('Q') for _ in range(nd)]
        infos.append((name, dims, take('I'), take('Q')))
    data = (pos + alignment - 1) // alignment * alignment
    for name, dims, t, off in infos:
        elems = 1
        for d in dims:
            elems *= d
        be, bb = BLOCK[t]
        nbytes = elems // be * bb
        h = fnv1a64(buf[data + off:data + off + nbytes])
        print(f"{name} {t} {','.join(map(str, dims))} {h:016x}")


if __name__ == '__main__':
    main(sys.argv[1])
