package experiment

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Chart colours: a colour-blind-safe palette (Okabe-Ito), so that series
// stay apart in print and on any screen.
var palette = []color.Color{
	color.RGBA{0, 114, 178, 255},   // blue
	color.RGBA{230, 159, 0, 255},   // orange
	color.RGBA{0, 158, 115, 255},   // green
	color.RGBA{204, 121, 167, 255}, // purple
	color.RGBA{86, 180, 233, 255},  // sky
	color.RGBA{213, 94, 0, 255},    // vermilion
	color.RGBA{240, 228, 66, 255},  // yellow
	color.RGBA{0, 0, 0, 255},       // black
}

var (
	colorOK     = palette[0]
	colorErrors = color.RGBA{200, 30, 30, 255}
	colorFault  = color.Gray{Y: 110}
)

// panel sizes of the grid charts.
const (
	panelW = 300 // points
	panelH = 200
)

// writeCharts draws the run's charts into dir, each as SVG and PNG, and
// returns the paths written.
func writeCharts(dir string, res *Results) ([]string, error) {
	if len(res.Cells) == 0 {
		return nil, nil
	}
	var written []string
	save := func(name string, draw func(format string) (vgWriter, error)) error {
		for _, format := range []string{"png", "svg"} {
			c, err := draw(format)
			if err != nil {
				return fmt.Errorf("chart %s: %w", name, err)
			}
			p := filepath.Join(dir, name+"."+format)
			if err := writeCanvas(p, c); err != nil {
				return fmt.Errorf("chart %s: %w", name, err)
			}
			written = append(written, p)
		}
		return nil
	}
	charts := []struct {
		name string
		draw func(string) (vgWriter, error)
		when bool
	}{
		{"timeline", func(f string) (vgWriter, error) { return gridChart(res, f, timelinePanel) }, true},
		{"backend_load", func(f string) (vgWriter, error) { return gridChart(res, f, loadPanel) }, true},
		{"sessions_lost", func(f string) (vgWriter, error) {
			return barChart(res, f, "Users who lost their session (%)", true, func(c *CellResult) (float64, bool) { return c.SessionsLostPct, true })
		}, true},
		{"users_moved", func(f string) (vgWriter, error) {
			return barChart(res, f, "Users moved across the first kill, add or remove (%)", true, func(c *CellResult) (float64, bool) {
				if c.UsersMovedPct == nil {
					return 0, false
				}
				return *c.UsersMovedPct, true
			})
		}, slices.ContainsFunc(res.Cells, func(c CellResult) bool { return c.UsersMovedPct != nil })},
		{"duplicate_orders", func(f string) (vgWriter, error) {
			return barChart(res, f, "Carts ordered twice (duplicate orders)", false, func(c *CellResult) (float64, bool) {
				return float64(c.DuplicateOrders), checkoutsMeasured(c)
			})
		}, slices.ContainsFunc(res.Cells, func(c CellResult) bool { return checkoutsMeasured(&c) })},
		{"latency", func(f string) (vgWriter, error) {
			return barChart(res, f, "p50 latency of successful requests (ms)", false, func(c *CellResult) (float64, bool) { return c.P50Ms, true })
		}, true},
	}
	for _, ch := range charts {
		if !ch.when {
			continue
		}
		if err := save(ch.name, ch.draw); err != nil {
			return written, err
		}
	}
	return written, nil
}

// vgWriter is a drawn canvas that writes itself in its format.
type vgWriter interface {
	vg.CanvasWriterTo
}

func writeCanvas(path string, c vgWriter) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// chartRow is a row of the grid charts and a group of the bar charts: a
// store, and a variant of the run when it has them.
type chartRow struct{ store, variant string }

func (r chartRow) String() string {
	if r.variant == "" {
		return r.store
	}
	return r.store + ", " + r.variant
}

// chartRows returns the rows of res's charts: every store, each with every
// variant.
func chartRows(res *Results) []chartRow {
	variants := res.Settings.Variants
	if len(variants) == 0 {
		variants = []string{""}
	}
	var rows []chartRow
	for _, st := range res.Settings.Stores {
		for _, v := range variants {
			rows = append(rows, chartRow{st, v})
		}
	}
	return rows
}

// cellAt returns the cell of balancer in row, or nil.
func cellAt(res *Results, balancer string, row chartRow) *CellResult {
	for i := range res.Cells {
		if c := &res.Cells[i]; c.BalancerEntry() == balancer && c.StoreEntry() == row.store && c.RunEntry() == row.variant {
			return c
		}
	}
	return nil
}

// gridChart draws one panel per cell, balancers across and stores (and
// variants) down, all on the same axes so that panels compare at a glance.
func gridChart(res *Results, format string, panel func(*CellResult, float64) (*plot.Plot, error)) (vgWriter, error) {
	bals, stores := res.Settings.Balancers, chartRows(res)
	ymax := 0.0
	for _, c := range res.Cells {
		for _, b := range c.Fine {
			ymax = max(ymax, perSecond(b.OK, b), perSecond(b.Errors, b))
			for _, n := range b.ByBackend {
				ymax = max(ymax, perSecond(n, b))
			}
		}
	}
	ymax = max(1, ymax*1.35) // a band above the data for the legend and the fault labels
	plots := make([][]*plot.Plot, len(stores))
	for i, st := range stores {
		plots[i] = make([]*plot.Plot, len(bals))
		for j, b := range bals {
			c := cellAt(res, b, st)
			if c == nil {
				continue
			}
			p, err := panel(c, ymax)
			if err != nil {
				return nil, err
			}
			plots[i][j] = p
		}
	}
	// Few columns get wider panels, so that a timeline stays legible.
	w, h := vg.Length(max(panelW, 600/len(bals))*len(bals)), vg.Length(panelH*len(stores))
	cv, err := draw.NewFormattedCanvas(w, h, format)
	if err != nil {
		return nil, err
	}
	tiles := draw.Tiles{Rows: len(stores), Cols: len(bals), PadX: 6, PadY: 6, PadTop: 4, PadBottom: 4, PadLeft: 4, PadRight: 8}
	canvases := plot.Align(plots, tiles, draw.New(cv))
	for i := range plots {
		for j, p := range plots[i] {
			if p != nil {
				p.Draw(canvases[i][j])
			}
		}
	}
	return cv, nil
}

// timelinePanel draws a cell's successful and failed requests per second,
// with its faults marked.
func timelinePanel(c *CellResult, ymax float64) (*plot.Plot, error) {
	p := newPanel(c, "requests/s")
	for _, s := range []struct {
		name  string
		col   color.Color
		value func(Bucket) int
	}{
		{"ok", colorOK, func(b Bucket) int { return b.OK }},
		{"errors", colorErrors, func(b Bucket) int { return b.Errors }},
	} {
		if err := addSeries(p, s.name, s.col, c.Fine, s.value); err != nil {
			return nil, err
		}
	}
	return p, markFaults(p, c, ymax)
}

// loadPanel draws the responses per second of each backend of a cell.
func loadPanel(c *CellResult, ymax float64) (*plot.Plot, error) {
	p := newPanel(c, "responses/s per backend")
	for i, be := range c.Backends {
		name := be.Name
		if err := addSeries(p, name, palette[i%len(palette)], c.Fine, func(b Bucket) int { return b.ByBackend[name] }); err != nil {
			return nil, err
		}
	}
	return p, markFaults(p, c, ymax)
}

func newPanel(c *CellResult, ylabel string) *plot.Plot {
	p := plot.New()
	p.Title.Text = c.BalancerEntry() + " × " + c.StoreEntry()
	if v := c.RunEntry(); v != "" {
		p.Title.Text += " × " + v
	}
	p.Title.TextStyle.Font.Size = 11
	p.X.Label.Text = "seconds"
	p.Y.Label.Text = ylabel
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font.Size = 9
		a.Tick.Label.Font.Size = 8
	}
	// Top left: faults rarely come in the first tenth of a run, so the
	// legend and the fault labels seldom meet.
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.TextStyle.Font.Size = 8
	p.Add(plotter.NewGrid())
	return p
}

// addSeries adds a line of value per second over the buckets, each point at
// the middle of its bucket.
func addSeries(p *plot.Plot, name string, col color.Color, buckets []Bucket, value func(Bucket) int) error {
	xys := make(plotter.XYs, 0, len(buckets))
	for _, b := range buckets {
		if b.Width <= 0 {
			continue
		}
		xys = append(xys, plotter.XY{X: (b.Start + b.Width/2).Seconds(), Y: perSecond(value(b), b)})
	}
	l, err := plotter.NewLine(xys)
	if err != nil {
		return err
	}
	l.Color, l.Width = col, vg.Points(1.5)
	p.Add(l)
	p.Legend.Add(name, l)
	return nil
}

// markFaults draws a dashed vertical line and a label where each fault of
// the cell was applied, and fixes the axes to the run and ymax.
func markFaults(p *plot.Plot, c *CellResult, ymax float64) error {
	p.Y.Min, p.Y.Max = 0, ymax
	if n := len(c.Fine); n > 0 {
		p.X.Min, p.X.Max = 0, (c.Fine[n-1].Start + c.Fine[n-1].Width).Seconds()
	}
	var labels plotter.XYLabels
	for _, f := range c.Faults {
		x := f.Start.Seconds()
		l, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0}, {X: x, Y: ymax}})
		if err != nil {
			return err
		}
		l.Color, l.Width, l.Dashes = colorFault, vg.Points(1), []vg.Length{vg.Points(4), vg.Points(3)}
		p.Add(l)
		name := string(f.Action)
		if f.Target != "" {
			name += " " + f.Target
		}
		// Three heights in turn, so that the labels of faults close in
		// time do not print over each other.
		labels.XYs = append(labels.XYs, plotter.XY{X: x, Y: ymax * (0.98 - 0.07*float64(len(labels.Labels)%3))})
		labels.Labels = append(labels.Labels, " "+name)
	}
	if len(labels.Labels) == 0 {
		return nil
	}
	lb, err := plotter.NewLabels(labels)
	if err != nil {
		return err
	}
	for i := range lb.TextStyle {
		lb.TextStyle[i].Font.Size = 8
		lb.TextStyle[i].Color = colorFault
		lb.TextStyle[i].YAlign = draw.YTop
	}
	p.Add(lb)
	return nil
}

// barChart draws value per cell as bars grouped by store, one colour per
// balancer, each bar labelled with its value. Cells where value has nothing
// to say are left out.
func barChart(res *Results, format, title string, percent bool, value func(*CellResult) (float64, bool)) (vgWriter, error) {
	bals, stores := res.Settings.Balancers, chartRows(res)
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = 12
	p.Legend.Top = true
	p.Legend.TextStyle.Font.Size = 9
	p.Add(plotter.NewGrid())
	// Points per group, wider for long names ("redis, client=nokey
	// retry=all").
	groupW := 110
	for _, st := range stores {
		groupW = max(groupW, 5*len(st.String()))
	}
	barW := vg.Points(float64(groupW-24) / float64(len(bals)))
	ymax := 0.0
	for j, b := range bals {
		vals := make(plotter.Values, len(stores))
		var labels plotter.XYLabels
		for i, st := range stores {
			c := cellAt(res, b, st)
			if c == nil {
				continue
			}
			v, ok := value(c)
			if !ok {
				continue
			}
			vals[i] = v
			ymax = max(ymax, v)
			labels.XYs = append(labels.XYs, plotter.XY{X: float64(i), Y: v})
			labels.Labels = append(labels.Labels, barLabel(v))
		}
		bc, err := plotter.NewBarChart(vals, barW)
		if err != nil {
			return nil, err
		}
		bc.Color, bc.LineStyle.Width = palette[j%len(palette)], 0
		bc.Offset = barW * vg.Length(float64(j)-float64(len(bals)-1)/2)
		p.Add(bc)
		p.Legend.Add(b, bc)
		if len(labels.Labels) == 0 {
			continue
		}
		lb, err := plotter.NewLabels(labels)
		if err != nil {
			return nil, err
		}
		for i := range lb.TextStyle {
			lb.TextStyle[i].Font.Size = 7
			lb.TextStyle[i].XAlign = draw.XCenter
		}
		lb.Offset = vg.Point{X: bc.Offset, Y: 2}
		p.Add(lb)
	}
	names := make([]string, len(stores))
	for i, st := range stores {
		names[i] = st.String()
	}
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.6, float64(len(stores))-0.4
	// Room above the tallest bar for its label and the legend; a share
	// needs no axis far beyond 100%.
	p.Y.Min, p.Y.Max = 0, max(1, ymax*1.3)
	if percent {
		p.Y.Max = min(p.Y.Max, 118)
	}
	w := vg.Length(max(420, groupW*len(stores)+140))
	cv, err := draw.NewFormattedCanvas(w, 280, format)
	if err != nil {
		return nil, err
	}
	p.Draw(draw.New(cv))
	return cv, nil
}

// barLabel writes a bar's value with the precision its size deserves.
func barLabel(v float64) string {
	if v >= 10 || v == 0 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func perSecond(n int, b Bucket) float64 {
	if b.Width <= 0 {
		return 0
	}
	return float64(n) / b.Width.Seconds()
}
