import { readFileSync } from 'node:fs'
import path from 'node:path'

/** The version in package.json (dist/src/cli/ is three levels below the package root). */
export function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as { version: string }
  return pkg.version
}
