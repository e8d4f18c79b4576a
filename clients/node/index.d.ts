export interface Generation {
  /** The generation's number (1 for a clone's /run). */
  number: number;
  /** 32 hex digits: the per-VM identity. */
  id: string | null;
  /** `run`, `resume`, `validate`, `restore-detected`, ... */
  reason: string | null;
  microvmId: string | null;
  /** Whether the kernel's generator was reseeded for this clone (see `KernelCrng`). */
  kernelCrng: KernelCrng | null;
  /** The 32 bytes the agent sent this process for this generation (null for suspend/terminate). */
  processSeed: Buffer | null;
  /**
   * Aborts when the agent stops waiting for this event's callbacks (pass it to `fetch` and the
   * like); null when the agent did not say (an older agent, or `current()`).
   */
  signal: AbortSignal | null;
}
/**
 * `reseeded`: the agent made the kernel reseed; `platform`: the kernel reseeds itself on a restore
 * (VMGenID, vmclock); `not-reseeded`: neither, so the kernel's bytes may be the same in every
 * clone: mix in the agent's seed.
 */
export type KernelCrng = 'reseeded' | 'platform' | 'not-reseeded';
export type Callback = (generation: Generation) => void | Promise<void>;
export function onNewGeneration(callback: Callback): Callback;
export function onSuspend(callback: Callback): Callback;
export function onTerminate(callback: Callback): Callback;
export function current(): Generation | null;
export function generationId(): string | null;
export function seed(): Buffer | null;
export function secret(name: string): Buffer | null;
export function kernelCrng(): KernelCrng | null;
/**
 * `n` bytes that differ in every clone: blocks of SHA-256 over the agent's seed for this process,
 * the pid, the generation and fresh `crypto.randomBytes(32)` (the protocol's mixing rule).
 */
export function randomBytes(n: number): Buffer;
export function isActive(): boolean;
