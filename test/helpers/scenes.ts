import { readFileSync } from 'node:fs';
import sharp from 'sharp';
import type { SceneFile } from '../../fixtures/generate.js';
import { fixtureImage } from './cli.js';

export interface LoadedScene extends SceneFile {
  path: string;
  /** Shape name → true mask, row-major 0/1, upright (EXIF-applied) coordinates. */
  masks: Map<string, Uint8Array>;
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
