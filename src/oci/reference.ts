/**
 * Repository names and tags, with the grammar of the OCI distribution spec.
 * @module
 */

const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$/;
const TAG = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;

/** Longest repository name accepted (the distribution registry's limit). */
export const MAX_NAME_LENGTH = 255;

/** True when `name` is a valid repository name: components joined by `/`. */
export function isValidName(name: string): boolean {
  if (name.length === 0 || name.length > MAX_NAME_LENGTH) return false;
  return name.split("/").every((c) => COMPONENT.test(c));
}

/** True when `tag` is a valid tag. */
export function isValidTag(tag: string): boolean {
  return TAG.test(tag);
}
