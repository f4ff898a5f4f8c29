// The SVG is built as plain text: a log10 y axis with decade grid lines, two bars per row.
#include "plot.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace spr_bench {

namespace {

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

}  // namespace

std::string format_latency(double us) {
  char buf[32];
  if (us < 1000)
    std::snprintf(buf, sizeof buf, "%.3g µs", us);
  else if (us < 1e6)
    std::snprintf(buf, sizeof buf, "%.3g ms", us / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.3g s", us / 1e6);
  return buf;
}

std::string latency_svg(const std::vector<PlotRow>& rows, const std::vector<PlotLine>& floors, const std::string& title,
                        const std::string& subtitle) {
  double lo_v = 1e300, hi_v = 0;
  auto widen = [&](double v) {
    if (v > 0) {
      lo_v = std::min(lo_v, v);
      hi_v = std::max(hi_v, v);
    }
  };
  for (const auto& r : rows) {
    widen(r.p50_us);
    widen(r.p99_us);
  }
  for (const auto& f : floors) widen(f.us);
  if (hi_v <= 0) lo_v = hi_v = 1;
  int lo = static_cast<int>(std::floor(std::log10(lo_v)));
  int hi = static_cast<int>(std::ceil(std::log10(hi_v)));
  if (hi <= lo) hi = lo + 1;

  const double group_w = 112, left = 90, right = 190, top = 96, bottom = 70, plot_h = 380;
  const double width = left + right + group_w * static_cast<double>(std::max<std::size_t>(rows.size(), 1));
  const double height = top + plot_h + bottom;
  const double base_y = top + plot_h;
  auto y_of = [&](double v) {
    const double f = (std::log10(v) - lo) / static_cast<double>(hi - lo);
    return base_y - std::clamp(f, 0.0, 1.0) * plot_h;
  };

  std::ostringstream o;
  o << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << num(width) << "\" height=\"" << num(height)
    << "\" viewBox=\"0 0 " << num(width) << ' ' << num(height) << "\" font-family=\"DejaVu Sans, Arial, sans-serif\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n"
    << "<text x=\"" << num(width / 2) << "\" y=\"28\" font-size=\"18\" text-anchor=\"middle\" font-weight=\"bold\">"
    << escape(title) << "</text>\n"
    << "<text x=\"" << num(width / 2) << "\" y=\"50\" font-size=\"12\" text-anchor=\"middle\" fill=\"#555\">"
    << escape(subtitle) << "</text>\n";

  // Grid: decades solid, 2x and 5x dotted.
  for (int d = lo; d <= hi; ++d) {
    const double v = std::pow(10.0, d);
    const double y = y_of(v);
    o << "<line x1=\"" << num(left) << "\" y1=\"" << num(y) << "\" x2=\"" << num(width - right) << "\" y2=\"" << num(y)
      << "\" stroke=\"#bbb\" stroke-width=\"1\"/>\n"
      << "<text x=\"" << num(left - 8) << "\" y=\"" << num(y + 4) << "\" font-size=\"12\" text-anchor=\"end\">"
      << escape(format_latency(v)) << "</text>\n";
    if (d == hi) break;
    for (double m : {2.0, 5.0}) {
      const double ym = y_of(v * m);
      o << "<line x1=\"" << num(left) << "\" y1=\"" << num(ym) << "\" x2=\"" << num(width - right) << "\" y2=\""
        << num(ym) << "\" stroke=\"#e3e3e3\" stroke-width=\"1\" stroke-dasharray=\"3,3\"/>\n";
    }
  }
  o << "<line x1=\"" << num(left) << "\" y1=\"" << num(top) << "\" x2=\"" << num(left) << "\" y2=\"" << num(base_y)
    << "\" stroke=\"#333\"/>\n"
    << "<line x1=\"" << num(left) << "\" y1=\"" << num(base_y) << "\" x2=\"" << num(width - right) << "\" y2=\""
    << num(base_y) << "\" stroke=\"#333\"/>\n"
    << "<text transform=\"translate(20," << num(top + plot_h / 2) << ") rotate(-90)\" font-size=\"13\" "
    << "text-anchor=\"middle\">latency per run (log scale)</text>\n";

  const char* colors[2] = {"#4878d0", "#ee854a"};
  const char* names[2] = {"p50", "p99"};
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const double gx = left + group_w * static_cast<double>(i);
    const double bar_w = 40;
    const double values[2] = {rows[i].p50_us, rows[i].p99_us};
    for (int b = 0; b < 2; ++b) {
      const double x = gx + group_w / 2 - bar_w - 2 + b * (bar_w + 4);
      if (!(values[b] > 0)) continue;
      const double y = y_of(values[b]);
      o << "<rect x=\"" << num(x) << "\" y=\"" << num(y) << "\" width=\"" << num(bar_w) << "\" height=\""
        << num(std::max(base_y - y, 1.0)) << "\" fill=\"" << colors[b] << "\"><title>" << escape(rows[i].label) << ' '
        << names[b] << ": " << escape(format_latency(values[b])) << "</title></rect>\n"
        << "<text x=\"" << num(x + bar_w / 2) << "\" y=\"" << num(y - 5)
        << "\" font-size=\"11\" text-anchor=\"middle\">" << escape(format_latency(values[b])) << "</text>\n";
    }
    // "mode pattern": the mode on one line, the pattern under it.
    const std::string& label = rows[i].label;
    const auto sp = label.find(' ');
    const std::string lines[2] = {label.substr(0, sp), sp == std::string::npos ? "" : label.substr(sp + 1)};
    for (int l = 0; l < 2; ++l)
      o << "<text x=\"" << num(gx + group_w / 2) << "\" y=\"" << num(base_y + 20 + 14 * l)
        << "\" font-size=\"11\" text-anchor=\"middle\">" << escape(lines[l]) << "</text>\n";
  }

  // Floors: dashed lines across the plot, labelled in the right margin.
  for (const auto& f : floors) {
    if (!(f.us > 0)) continue;
    const double y = y_of(f.us);
    o << "<line x1=\"" << num(left) << "\" y1=\"" << num(y) << "\" x2=\"" << num(width - right) << "\" y2=\"" << num(y)
      << "\" stroke=\"#c03030\" stroke-width=\"1.5\" stroke-dasharray=\"6,4\"/>\n"
      << "<text x=\"" << num(width - right + 6) << "\" y=\"" << num(y + 4) << "\" font-size=\"11\" fill=\"#c03030\">"
      << escape(f.label + " " + format_latency(f.us)) << "</text>\n";
  }

  // Legend, above the plot area on the right, clear of the bars.
  for (int b = 0; b < 2; ++b) {
    const double lx = width - right - 230 + b * 115, ly = top - 30;
    o << "<rect x=\"" << num(lx) << "\" y=\"" << num(ly) << "\" width=\"14\" height=\"14\" fill=\"" << colors[b]
      << "\"/>\n"
      << "<text x=\"" << num(lx + 20) << "\" y=\"" << num(ly + 12) << "\" font-size=\"12\">" << names[b]
      << " latency</text>\n";
  }
  o << "</svg>\n";
  return o.str();
}

}  // namespace spr_bench
