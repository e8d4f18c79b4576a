export interface Generation {
  /** The generation's number (1 for a clone's /run). */
  number: number;
  /** 32 hex digits: the per-VM identity. */
  id: string | null;
  /** `run`, `resume`, `validate`, `restore-detected`, ... */
  reason: string | null;
  microvmId: string | null;
  /** `reseeded`, `platform` or `not-reseeded`. */
  kernelCrng: string | null;
  /** The 32 bytes the agent sent this process for this generation (null for suspend/terminate). */
  processSeed: Buffer | null;
}
export type Callback = (generation: Generation) => void | Promise<void>;
export function onNewGeneration(callback: Callback): Callback;
export function onSuspend(callback: Callback): Callback;
export function onTerminate(callback: Callback): Callback;
export function current(): Generation | null;
export function generationId(): string | null;
export function seed(): Buffer | null;
export function secret(name: string): Buffer | null;
export function kernelCrng(): string | null;
/** `n` bytes that differ in every clone: HMAC-SHA256(agent seed, crypto.randomBytes) blocks. */
export function randomBytes(n: number): Buffer;
export function isActive(): boolean;
