import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EXIT } from '../src/commands/exit.js';
import { fixtureImage, fixtureModel, runSam, tempDir } from './helpers/cli.js';

const tmp = tempDir('sam-errors-');
afterAll(() => tmp.cleanup());

const image = fixtureImage('basic-320x240.png');
const outJson = () => join(tmp.dir, 'out', 'masks.json');

/** One line on stderr naming the problem, the expected exit code, and no output file left behind. */
async function expectFailure(args: string[], code: number, pattern: RegExp, outputs: string[] = [outJson()]): Promise<void> {
  const r = await runSam(args);
  expect(r.code).toBe(code);
  const lines = r.stderr.trim().split('\n');
  expect(lines[0]).toMatch(pattern);
  expect(lines).toHaveLength(1);
  for (const o of outputs) expect(existsSync(o)).toBe(false);
  // Nothing half-written (temp files) either.
  const outDir = join(tmp.dir, 'out');
  if (existsSync(outDir)) expect(readdirSync(outDir)).toEqual([]);
}

describe('bad input gives one clear line, a non-zero exit code and no partial output', () => {
  it('missing model folder', async () => {
    await expectFailure(['segment', image, '-m', join(tmp.dir, 'no-such-model'), '-p', '10,10', '-o', outJson()], EXIT.model, /model folder .*no-such-model does not exist; pass --model/);
  });

  it('decoder with the wrong inputs', async () => {
    await expectFailure(
      ['segment', image, '-m', fixtureModel('broken-decoder'), '-p', '10,10', '-o', outJson()],
      EXIT.model,
      /decoder\.onnx: not a SAM decoder: expected inputs .*point_labels.* \(missing point_labels\); use an export with the official SAM signature/,
    );
  });

  it('encoder with the wrong output shape', async () => {
    await expectFailure(['segment', image, '-m', fixtureModel('bad-encoder'), '-p', '10,10', '-o', outJson()], EXIT.model, /image_embeddings.*\[1,256,64,64\].*\[1,256,32,32\]/);
  });

  it('zero-byte image', async () => {
    const f = join(tmp.dir, 'empty.jpg');
    writeFileSync(f, '');
    await expectFailure(['segment', f, '-m', fixtureModel(), '-p', '10,10', '-o', outJson()], EXIT.input, /empty\.jpg: empty file \(0 bytes\); re-export or re-download/);
  });

  it('corrupt (truncated) image', async () => {
    const f = join(tmp.dir, 'truncated.png');
    const bytes = readFileSync(image);
    writeFileSync(f, bytes.subarray(0, Math.floor(bytes.length / 2)));
    await expectFailure(['segment', f, '-m', fixtureModel(), '-p', '10,10', '-o', outJson()], EXIT.input, /truncated\.png: corrupt or truncated image .*; re-export or re-download it/);
  });

  it('unreadable (missing) image', async () => {
    await expectFailure(['segment', join(tmp.dir, 'nope.png'), '-m', fixtureModel(), '-p', '10,10', '-o', outJson()], EXIT.input, /nope\.png: no such file; check the path/);
  });

  it('non-image file', async () => {
    const f = join(tmp.dir, 'notes.jpg');
    writeFileSync(f, 'these are not pixels\n'.repeat(20));
    await expectFailure(['segment', f, '-m', fixtureModel(), '-p', '10,10', '-o', outJson()], EXIT.input, /notes\.jpg: not an image sharp can decode/);
  });

  it('a point outside the image', async () => {
    await expectFailure(['segment', image, '-m', fixtureModel(), '-p', '400,10', '-o', outJson()], EXIT.input, /point 400,10 is outside the 320x240 image; give x in 0\.\.320 and y in 0\.\.240/);
  });

  it('malformed --points', async () => {
    for (const bad of ['10', '10,abc', '10,10,7', '']) {
      await expectFailure(['segment', image, '-m', fixtureModel(), '-p', bad, '-o', outJson()], EXIT.usage, /--points.*"x,y\[,label\] \.\.\."/);
    }
  });

  it('malformed --box and a wrong output extension', async () => {
    await expectFailure(['segment', image, '-m', fixtureModel(), '-b', '1,2,3', '-o', outJson()], EXIT.usage, /--box '1,2,3' is not x0,y0,x1,y1/);
    await expectFailure(['segment', image, '-m', fixtureModel(), '-p', '10,10', '-o', join(tmp.dir, 'out', 'm.txt')], EXIT.usage, /--out .*m\.txt: name a \.json or \.png file/);
  });

  it('embedding from another model, or for another image size', async () => {
    const embDir = join(tmp.dir, 'emb');
    expect((await runSam(['embed', image, '-m', fixtureModel('oracle-single'), '-o', embDir, '-q'])).code).toBe(0);
    const emb = join(embDir, 'basic-320x240.safetensors');
    await expectFailure(
      ['segment', image, '-m', fixtureModel(), '-p', '10,10', '-e', emb, '-o', outJson()],
      EXIT.input,
      /basic-320x240\.safetensors: embedding was made by model 'oracle-single-v1', not 'oracle-v1'; rerun 'sam embed' with this --model/,
    );
    const other = fixtureImage('tall-200x500.png');
    await expectFailure(
      ['segment', other, '-m', fixtureModel('oracle-single'), '-p', '10,10', '-e', emb, '-o', outJson()],
      EXIT.input,
      /embedding is for a 320x240 image, this image is 200x500; rerun 'sam embed' on this image/,
    );
  });

  it('unknown or missing options are one-line usage errors', async () => {
    await expectFailure(['segment', image, '-m', fixtureModel(), '-p', '10,10', '-o', outJson(), '--frobnicate'], EXIT.usage, /^sam: error: unknown option '--frobnicate' \(run with --help for usage\)$/);
    await expectFailure(['auto', image, '-o', join(tmp.dir, 'out')], EXIT.usage, /^sam: error: required option '-m, --model <dir>' not specified/);
  });

  it('an output that cannot be written is exit 6 naming the output, not a temp file', async () => {
    const blocker = join(tmp.dir, 'a-file');
    writeFileSync(blocker, 'not a folder');
    for (const out of [join(blocker, 'masks.json'), join(blocker, 'mask.png')]) {
      const r = await runSam(['segment', image, '-m', fixtureModel(), '-p', '10,10', '-o', out]);
      expect(r.code).toBe(EXIT.output);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toContain(`cannot write ${out}: a parent of it is a file`);
      expect(r.stderr).not.toMatch(/\.tmp/);
    }
    const r = await runSam(['embed', image, '-m', fixtureModel(), '-o', blocker, '-q']);
    expect(r.code).toBe(EXIT.someFailed);
    expect(r.stderr).toMatch(/cannot write .*a-file.*basic-320x240\.safetensors: a parent of it is a file/);
  });

  it('--embedding takes a file and --embeddings a folder, and each says so', async () => {
    const dir = join(tmp.dir, 'emb-dir');
    mkdirSync(dir, { recursive: true });
    await expectFailure(['segment', image, '-m', fixtureModel(), '-p', '10,10', '-o', outJson(), '--embedding', dir], EXIT.usage, /--embedding .*emb-dir is a folder; give one \.safetensors file .*sam auto --embeddings DIR/);
    await expectFailure(['auto', image, '-m', fixtureModel(), '-o', join(tmp.dir, 'out'), '--embeddings', image], EXIT.usage, /--embeddings .* is a file; give the folder/);
  });

  it('a batch with a bad file finishes the others and exits with the "some failed" code', async () => {
    const dir = join(tmp.dir, 'batch');
    const embDir = join(tmp.dir, 'batch-emb');
    mkdirSync(dir, { recursive: true });
    for (const f of ['a.png', 'b.png']) copyFileSync(image, join(dir, f));
    writeFileSync(join(dir, 'c.png'), readFileSync(image).subarray(0, 300));
    const r = await runSam(['embed', dir, join(dir, 'c.png'), '-m', fixtureModel(), '-o', embDir]);
    expect(r.code).toBe(EXIT.someFailed);
    expect(r.stderr).toMatch(/2 done, 0 skipped, 1 failed/);
    expect(r.stderr).toMatch(/c\.png: corrupt or truncated image/);
    expect(readdirSync(embDir).sort()).toEqual(['a.safetensors', 'b.safetensors']);
  });
});
