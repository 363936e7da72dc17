import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node } from 'yaml';

export interface SourcePosition {
  line: number;
  col: number;
}

/**
 * A config file's YAML text kept as a document, so that a problem found in the parsed value can
 * be pointed at the line that holds it.
 */
export class YamlSource {
  private readonly lineCounter = new LineCounter();
  private readonly doc: Document.Parsed;

  constructor(text: string) {
    this.doc = parseDocument(text, { lineCounter: this.lineCounter });
  }

  /**
   * YAML syntax errors, one line each: where and what, without yaml's excerpt of the source
   * line (it may hold a password).
   */
  syntaxErrors(): string[] {
    return this.doc.errors.map((err) => {
      const what = err.message.split(' at line ')[0]!;
      const at = err.linePos?.[0];
      return at ? `line ${at.line}, column ${at.col}: ${what}` : what;
    });
  }

  toJS(): unknown {
    return this.doc.toJS();
  }

  /**
   * Where `path` is written: the key of a mapping entry or the item of a list. A path the file
   * does not hold (a missing key, a default) gives its nearest ancestor that it does; a top-level
   * key the file lacks gives undefined.
   */
  positionOf(path: readonly PropertyKey[]): SourcePosition | undefined {
    let node: unknown = this.doc.contents;
    let found: Node | undefined;
    for (const key of path) {
      if (isMap(node)) {
        const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(key));
        if (!pair) break;
        found = pair.key as Node;
        node = pair.value;
      } else if (isSeq(node) && typeof key === 'number' && node.items[key] !== undefined) {
        found = node.items[key] as Node;
        node = found;
      } else break;
    }
    const offset = found?.range?.[0];
    return offset === undefined ? undefined : this.lineCounter.linePos(offset);
  }
}
