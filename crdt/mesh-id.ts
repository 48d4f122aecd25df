/**
 * A mesh id is derived from its founder's peer id and a random nonce, so that no other host can
 * write a genesis for the same mesh: a joining host accepts as founder only the feed whose
 * genesis derives the id it was given.
 */
import { createHash } from 'node:crypto'

export function meshIdFor (founder: string, nonce: string): string {
  return createHash('sha256').update(`picocloud/mesh/2\0${founder}\0${nonce}`).digest('hex').slice(0, 32)
}
