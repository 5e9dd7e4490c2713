#include "cli/svg_plot.h"

#include <cmath>

#include "absl/strings/str_format.h"

namespace moe_router {
namespace {

constexpr double kWidth = 900, kHeight = 500;
constexpr double kLeft = 70, kRight = 300, kTop = 40, kBottom = 60;
const char* const kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<')
      out += "&lt;";
    else if (c == '>')
      out += "&gt;";
    else if (c == '&')
      out += "&amp;";
    else
      out += c;
  }
  return out;
}

}  // namespace

std::string RenderSvg(const Plot& p) {
  const double w = kWidth - kLeft - kRight, h = kHeight - kTop - kBottom;
  const auto sx = [&](double x) { return kLeft + (x - p.x_min) / (p.x_max - p.x_min) * w; };
  const auto sy = [&](double y) { return kTop + h - (y - p.y_min) / (p.y_max - p.y_min) * h; };
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" "
      "fill=\"white\"/>\n<text x=\"%.0f\" y=\"22\" font-size=\"15\">%s</text>\n",
      kWidth, kHeight, kLeft, Escape(p.title));
  absl::StrAppendFormat(&svg,
                        "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
                        "stroke=\"#333\"/>\n",
                        kLeft, kTop, w, h);
  for (int i = 0; i <= 5; ++i) {
    const double x = p.x_min + (p.x_max - p.x_min) * i / 5;
    const double y = p.y_min + (p.y_max - p.y_min) * i / 5;
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.3g</text>\n",
                          sx(x), kTop, sx(x), kTop + h, sx(x), kTop + h + 16, x);
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n",
                          kLeft, sy(y), kLeft + w, sy(y), kLeft - 6, sy(y) + 4, y);
  }
  if (!std::isnan(p.y_goal)) {
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#888\" "
                          "stroke-dasharray=\"6,4\"/>\n",
                          kLeft, sy(p.y_goal), kLeft + w, sy(p.y_goal));
  }
  if (!std::isnan(p.x_goal)) {
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#888\" "
                          "stroke-dasharray=\"6,4\"/>\n",
                          sx(p.x_goal), kTop, sx(p.x_goal), kTop + h);
  }
  absl::StrAppendFormat(&svg,
                        "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n"
                        "<text transform=\"translate(18 %.1f) rotate(-90)\" "
                        "text-anchor=\"middle\">%s</text>\n",
                        kLeft + w / 2, kHeight - 18, Escape(p.x_label), kTop + h / 2,
                        Escape(p.y_label));
  for (size_t s = 0; s < p.series.size(); ++s) {
    const PlotSeries& series = p.series[s];
    const char* color = kColors[s % 6];
    std::string points;
    for (size_t i = 0; i < series.x.size(); ++i) {
      absl::StrAppendFormat(&points, "%.1f,%.1f ", sx(series.x[i]), sy(series.y[i]));
    }
    const char* dash = series.dashed ? " stroke-dasharray=\"7,4\"" : "";
    absl::StrAppendFormat(&svg,
                          "<polyline points=\"%s\" fill=\"none\" stroke=\"%s\" "
                          "stroke-width=\"2\"%s/>\n",
                          points, color, dash);
    for (size_t i = 0; i < series.x.size(); ++i) {
      absl::StrAppendFormat(&svg, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\"/>\n",
                            sx(series.x[i]), sy(series.y[i]), color);
      if (i < series.labels.size() && !series.labels[i].empty()) {
        absl::StrAppendFormat(
            &svg, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" fill=\"%s\">%s</text>\n",
            sx(series.x[i]) + 5, sy(series.y[i]) - 5, color, Escape(series.labels[i]));
      }
    }
    const double ly = kTop + 10 + 20 * static_cast<double>(s);
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                          "stroke-width=\"3\"%s/><text x=\"%.1f\" y=\"%.1f\">%s</text>\n",
                          kLeft + w + 14, ly, kLeft + w + 34, ly, color, dash, kLeft + w + 40,
                          ly + 4, Escape(series.name));
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace moe_router
