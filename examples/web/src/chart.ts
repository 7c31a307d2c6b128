// A small line chart in SVG for the metrics panel: values over the last few minutes, newest on the
// right, the y axis from 0 to a ceiling that grows with the values. The chart element carries its
// last value and sample count as data attributes (`data-last`, `data-count`), for scripts and
// tests that cannot read pixels.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 300;
const HEIGHT = 80;

export interface Point {
  /** Milliseconds since the epoch. */
  time: number;
  /** undefined leaves a gap (the workspace was not running). */
  value: number | undefined;
}

export class LineChart {
  private readonly line: SVGPathElement;
  constructor(
    private readonly svg: SVGSVGElement,
    /** Where the top of the y axis is written (outside the SVG, which stretches to its box). */
    private readonly ceilingLabel: HTMLElement,
    /** How the axis label words a value (`100 %`, `64.0 MiB`). */
    private readonly format: (value: number) => string,
    /** The lowest ceiling of the y axis (100 for CPU %, so one busy core fills it). */
    private readonly minCeiling: number,
  ) {
    svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
    svg.setAttribute("preserveAspectRatio", "none");
    const grid = document.createElementNS(SVG, "path");
    grid.setAttribute("class", "grid");
    grid.setAttribute("d", `M0 ${HEIGHT / 2} H${WIDTH} M0 0.5 H${WIDTH}`);
    this.line = document.createElementNS(SVG, "path");
    this.line.setAttribute("class", "line");
    svg.replaceChildren(grid, this.line);
  }

  /**
   * Draws `points` (oldest first) over the window of `windowMs` ending at `now`; a `limit` above
   * 0 (the memory limit) is the top of the y axis, so the line shows how close usage is to it.
   */
  draw(points: readonly Point[], windowMs: number, now: number, limit = 0): void {
    const values = points.flatMap((p) => (p.value === undefined ? [] : [p.value]));
    const highest = Math.max(this.minCeiling, ...values);
    const ceiling = limit > 0 && limit >= highest ? limit : niceCeiling(highest);
    const x = (time: number) => (((time - (now - windowMs)) / windowMs) * WIDTH).toFixed(1);
    const y = (value: number) => (HEIGHT - (Math.min(value, ceiling) / ceiling) * (HEIGHT - 2)).toFixed(1);
    let d = "";
    let drawing = false;
    for (const p of points) {
      if (p.value === undefined) {
        drawing = false;
        continue;
      }
      d += `${drawing ? "L" : "M"}${x(p.time)} ${y(p.value)} `;
      drawing = true;
    }
    this.line.setAttribute("d", d.trim());
    this.ceilingLabel.textContent = `top ${this.format(ceiling)}`;
    const last = points.at(-1)?.value;
    this.svg.dataset.last = last === undefined ? "" : String(last);
    this.svg.dataset.max = values.length ? String(Math.max(...values)) : "";
    this.svg.dataset.count = String(values.length);
  }
}

/** The smallest of 1, 2 or 5 times a power of ten (or of 1024 for big byte counts) ≥ `value`. */
function niceCeiling(value: number): number {
  if (value <= 0) return 1;
  const base = value >= 1024 ** 2 ? 1024 : 10;
  const power = base ** Math.floor(Math.log(value) / Math.log(base));
  for (const step of base === 1024 ? [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024] : [1, 2, 5, 10]) {
    if (power * step >= value) return power * step;
  }
  return power * base;
}
