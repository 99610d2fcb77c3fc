import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import type { SceneFile } from '../../fixtures/generate.js';
import { PALETTE } from '../../fixtures/synthetic.js';
import { fixtureImage } from './cli.js';

export interface LoadedScene extends SceneFile {
  path: string;
  /** Shape name → true mask, row-major 0/1, upright (EXIF-applied) coordinates. */
  masks: Map<string, Uint8Array>;
}

/** Copy fixture scenes into `dir` (a name may carry a subfolder: 'sub/basic-320x240'). */
export function copyScenes(dir: string, names: readonly string[]): void {
  for (const n of names) {
    const dest = path.join(dir, `${n}.png`);
    mkdirSync(path.dirname(dest), { recursive: true });
    copyFileSync(fixtureImage(`${path.basename(n)}.png`), dest);
  }
}

/** A synthetic scene written by the fixture generator, with its true masks. */
export async function loadScene(name: string): Promise<LoadedScene> {
  const scene = JSON.parse(readFileSync(fixtureImage(`${name}.json`), 'utf8')) as SceneFile;
  const masks = new Map<string, Uint8Array>();
  for (const s of scene.shapes) masks.set(s.name, await readBinaryPng(fixtureImage(s.mask)));
  return { ...scene, path: fixtureImage(scene.file), masks };
}

/** A 0/255 mask PNG as 0/1 bytes, with its size. */
export async function readBinaryPng(path: string): Promise<Uint8Array & { width?: number; height?: number }> {
  const { data, info } = await sharp(path).greyscale().raw().toBuffer({ resolveWithObject: true });
  const out: Uint8Array & { width?: number; height?: number } = new Uint8Array(info.width * info.height);
  for (let i = 0; i < out.length; i++) out[i] = data[i * info.channels] > 127 ? 1 : 0;
  out.width = info.width;
  out.height = info.height;
  return out;
}

/** A true shape of a scene written by a test. */
export interface PaintedShape {
  name: string;
  mask: Uint8Array;
}

/**
 * `small-things.png` in `dir`, 512x512 on white: a large blue disc and four 14 px squares, placed
 * on points of the 8x8 grid of the layer-1 crops (343 px, origins 0 and 169) and between the
 * points of the crop-0 grid (32 + 64 i), away from the inner crop edges. Shapes in that order.
 */
export async function writeSmallThingsScene(dir: string): Promise<{ image: string; shapes: PaintedShape[] }> {
  const W = 512;
  const squares: [string, readonly number[], number, number][] = [
    ['red', PALETTE.red, 64, 107],
    ['green', PALETTE.green, 448, 64],
    ['magenta', PALETTE.magenta, 405, 448],
    ['cyan', PALETTE.cyan, 150, 362],
  ];
  const shapes: PaintedShape[] = [];
  const px = new Uint8Array(W * W * 3).fill(255);
  const paint = (name: string, colour: readonly number[], inside: (x: number, y: number) => boolean) => {
    const mask = new Uint8Array(W * W);
    for (let y = 0; y < W; y++) {
      for (let x = 0; x < W; x++) {
        if (!inside(x + 0.5, y + 0.5)) continue;
        mask[y * W + x] = 1;
        px.set(colour, (y * W + x) * 3);
      }
    }
    shapes.push({ name, mask });
  };
  paint('disc', PALETTE.blue, (x, y) => (x - 256) ** 2 + (y - 256) ** 2 <= 60 * 60);
  for (const [name, colour, cx, cy] of squares) paint(name, colour, (x, y) => Math.abs(x - cx) < 7 && Math.abs(y - cy) < 7);
  const image = path.join(dir, 'small-things.png');
  await sharp(px, { raw: { width: W, height: W, channels: 3 } }).png().toFile(image);
  return { image, shapes };
}
