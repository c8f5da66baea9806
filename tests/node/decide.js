// Runs decision graphs with onnxruntime-node: node decide.js MANIFEST.json
// MANIFEST: [{"model": path, "logits": path to raw float32 (n, k), "n": n, "k": k, "out": prefix}]
// Writes OUT.label (int64), OUT.score (float64), OUT.reject (uint8), little-endian raw arrays.
'use strict';
const fs = require('fs');
const ort = require('onnxruntime-node');

async function main() {
  const cases = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  for (const c of cases) {
    const session = await ort.InferenceSession.create(c.model, { executionProviders: ['cpu'] });
    const buf = fs.readFileSync(c.logits);
    const data = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
    const out = await session.run({ logits: new ort.Tensor('float32', data, [c.n, c.k]) });
    for (const name of ['label', 'score', 'reject']) {
      const d = out[name].data;
      fs.writeFileSync(`${c.out}.${name}`, Buffer.from(d.buffer, d.byteOffset, d.byteLength));
    }
  }
  console.log(`onnxruntime-node ${ort.env.versions.node}: ${cases.length} models`);
}

main().catch((err) => { console.error(err); process.exit(1); });
