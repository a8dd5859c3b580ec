// Small inline icons (no icon font, no emoji: they render the same everywhere).
const paths = {
  edit: "M4 20h4L19 9l-4-4L4 16v4zM14 6l4 4",
  trash: "M5 7h14M10 7V4h4v3M7 7l1 13h8l1-13",
  regenerate: "M20 11a8 8 0 1 0-2.3 5.7M20 5v6h-6",
  menu: "M4 6h16M4 12h16M4 18h16",
  prev: "M15 5l-7 7 7 7",
  next: "M9 5l7 7-7 7",
  close: "M6 6l12 12M18 6L6 18",
};

export function Icon({ name }) {
  return (
    <svg class="ico" viewBox="0 0 24 24" width="16" height="16" aria-hidden="true" focusable="false"
      fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round">
      <path d={paths[name]} />
    </svg>
  );
}
